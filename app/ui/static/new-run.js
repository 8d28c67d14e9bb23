// Start a run: upload a corpus (or pick one), pick a base model, set the main hyperparameters, submit.
// The API checks everything and says what is wrong (its message, and the parameter it concerns), shown
// beside the form; the browser does not second-guess it.

import { getJson, listAll, request, upload } from "./api.js";
import { errorBox, fill, formatBytes, formatNumber, h } from "./dom.js";

// The hyperparameters the form offers; the rest keep their defaults (the run page lists them all).
const FIELDS = [
  ["max_steps", "Max steps"],
  ["learning_rate", "Learning rate (peak)"],
  ["batch_size", "Batch size"],
  ["max_seq_length", "Max sequence length"],
  ["warmup_ratio", "Warm-up ratio"],
];
const HF_PATTERN = "hf:<repo_id>";

export function newRunView(main) {
  const controller = new AbortController();
  const { signal } = controller;

  const problem = h("div", { id: "form-error" });
  const corpusSelect = h("select", { id: "corpus", name: "corpus_id", required: true });
  const referenceSelect = h("select", { id: "reference-corpus", name: "reference_corpus_id" });
  const modelSelect = h("select", { id: "base-model", name: "base_model", required: true });
  const repoInput = h("input", { id: "hf-repo", placeholder: "organization/model", hidden: true });
  const fileInput = h("input", { id: "corpus-file", type: "file", accept: ".txt,.gz,text/plain" });
  const uploadStatus = h("div", { id: "upload-status", class: "muted" });
  const nameInput = h("input", { id: "run-name", name: "name", placeholder: "default: base model and corpus" });
  const inputs = Object.fromEntries(
    FIELDS.map(([name]) => [name, h("input", { id: `hp-${name}`, name, inputmode: "decimal", placeholder: "default" })]),
  );
  const helps = Object.fromEntries(FIELDS.map(([name]) => [name, h("small", { class: "muted" })]));
  const submit = h("button", { type: "submit", class: "primary", id: "submit-run" }, "Start the run");

  const form = h(
    "form",
    { class: "card form", id: "new-run", novalidate: true },
    h("h2", {}, "Training corpus"),
    h("label", {}, "Upload a corpus (.txt or .txt.gz, one sentence per line, a blank line between documents)", fileInput),
    uploadStatus,
    h("label", {}, "Corpus", corpusSelect),
    h("label", {}, "Reference corpus (optional: general text evaluated to measure forgetting)", referenceSelect),
    h("h2", {}, "Base model"),
    h("label", {}, "Start from", modelSelect),
    h("label", { class: "hf" }, repoInput),
    h("h2", {}, "Hyperparameters"),
    h(
      "div",
      { class: "grid" },
      FIELDS.map(([name, label]) => h("label", {}, label, inputs[name], helps[name])),
    ),
    h("label", {}, "Name (optional)", nameInput),
    problem,
    submit,
  );
  fill(main, h("h1", {}, "New run"), form);

  modelSelect.addEventListener("change", () => {
    repoInput.hidden = modelSelect.value !== HF_PATTERN;
  });
  fileInput.addEventListener("change", uploadCorpus);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitRun();
  });

  function corpusOption(corpus) {
    const counts = `${formatNumber(corpus.documents)} documents, ${formatBytes(corpus.bytes)}`;
    return h("option", { value: corpus.id }, `${corpus.name} (${counts})`);
  }

  async function loadChoices() {
    const [corpora, models] = await Promise.all([
      listAll("/v1/corpora", { signal }),
      getJson("/v1/models", { signal }),
    ]);
    fill(corpusSelect, h("option", { value: "" }, corpora.length ? "— pick a corpus —" : "— upload one above —"), corpora.map(corpusOption));
    fill(referenceSelect, h("option", { value: "" }, "none"), corpora.map(corpusOption));
    const kinds = { builtin: "Built-in", checkpoint: "Your checkpoints", run: "Your runs", hf: "Hugging Face Hub" };
    fill(
      modelSelect,
      Object.entries(kinds).map(([kind, label]) => {
        const options = models.data.filter((model) => model.kind === kind);
        return options.length
          ? h(
              "optgroup",
              { label },
              options.map((model) =>
                h(
                  "option",
                  { value: model.id, disabled: !model.available },
                  `${model.name}${model.id !== model.name ? ` (${model.id})` : ""}${model.available ? "" : " — unavailable"}`,
                ),
              ),
            )
          : null;
      }),
    );
    repoInput.hidden = modelSelect.value !== HF_PATTERN;
  }

  // Defaults and help texts from the API's own description (/openapi.json: the schema of RunCreate's
  // hyperparameters); the placeholders say "default" when it has none.
  async function loadDefaults() {
    const schema = await (await request("/openapi.json", { signal })).json();
    const described = resolve(schema, schema.components?.schemas?.RunCreate?.properties?.hyperparameters);
    for (const [name] of FIELDS) {
      const property = described?.properties?.[name];
      if (!property) continue;
      if (property.default !== undefined && property.default !== null) inputs[name].placeholder = `default ${property.default}`;
      if (property.description) helps[name].textContent = property.description;
    }
  }

  // A schema, its $ref followed (also through allOf/anyOf, as generators wrap a described reference).
  function resolve(document, schema, depth = 0) {
    if (!schema || depth > 5) return null;
    if (schema.$ref?.startsWith("#/")) {
      const target = schema.$ref.slice(2).split("/").reduce((node, part) => node?.[part], document);
      return resolve(document, target, depth + 1);
    }
    if (schema.properties) return schema;
    for (const option of [...(schema.allOf ?? []), ...(schema.anyOf ?? [])]) {
      const found = resolve(document, option, depth + 1);
      if (found) return found;
    }
    return null;
  }

  async function uploadCorpus() {
    const file = fileInput.files[0];
    if (!file) return;
    fill(problem);
    uploadStatus.textContent = `Uploading ${file.name}…`;
    try {
      const corpus = await upload("/v1/corpora", file, {
        onProgress: (sent, total) => {
          uploadStatus.textContent = `Uploading ${file.name}: ${formatBytes(sent)}${total ? ` of ${formatBytes(total)}` : ""}`;
        },
      });
      for (const select of [corpusSelect, referenceSelect]) {
        if (![...select.options].some((option) => option.value === corpus.id)) select.append(corpusOption(corpus));
      }
      corpusSelect.value = corpus.id;
      fill(
        uploadStatus,
        `Uploaded ${corpus.name}: ${formatNumber(corpus.documents)} documents, ${formatNumber(corpus.sentences)} sentences.`,
        corpus.warnings?.length
          ? h("ul", { class: "warnings" }, corpus.warnings.map((w) => h("li", {}, h("strong", {}, w.code), `: ${w.message}`)))
          : null,
      );
    } catch (error) {
      fill(uploadStatus);
      fill(problem, errorBox(error));
    } finally {
      fileInput.value = "";
    }
  }

  function body() {
    const hyperparameters = {};
    for (const [name] of FIELDS) {
      const text = inputs[name].value.trim();
      if (text === "") continue;
      const number = Number(text);
      hyperparameters[name] = Number.isFinite(number) ? number : text; // the API names what it refuses
    }
    const baseModel = modelSelect.value === HF_PATTERN ? `hf:${repoInput.value.trim()}` : modelSelect.value;
    const run = { base_model: baseModel, corpus_id: corpusSelect.value, hyperparameters };
    if (referenceSelect.value) run.reference_corpus_id = referenceSelect.value;
    if (nameInput.value.trim()) run.name = nameInput.value.trim();
    return run;
  }

  // The field an API error concerns (its `param`), marked.
  function markInvalid(param) {
    for (const element of form.querySelectorAll(".invalid")) element.classList.remove("invalid");
    const field = param?.startsWith("hyperparameters.") ? param.slice("hyperparameters.".length) : param;
    const element = form.querySelector(`[name="${CSS.escape(field ?? "")}"]`);
    if (element) {
      element.classList.add("invalid");
      element.focus();
    }
  }

  // One key per form shown: a double submission (or a retry after a lost answer) creates one run.
  const idempotencyKey = crypto.randomUUID();

  async function submitRun() {
    fill(problem);
    markInvalid(null);
    submit.disabled = true;
    try {
      const run = await getJson("/v1/runs", { method: "POST", json: body(), headers: { "Idempotency-Key": idempotencyKey }, signal });
      location.hash = `#/runs/${run.id}`;
    } catch (error) {
      if (error.name === "AbortError") return;
      fill(problem, errorBox(error));
      markInvalid(error.param);
    } finally {
      submit.disabled = false;
    }
  }

  loadChoices().catch((error) => error.name !== "AbortError" && fill(problem, errorBox(error)));
  loadDefaults().catch(() => {}); // placeholders only
  return () => controller.abort();
}
