// Runs side by side: their curves overlaid on one chart per metric, and their baseline and latest
// evaluations in a table. Refreshed while one of them is still active.

import { getJson } from "./api.js";
import { COLORS, Chart, SeriesStore } from "./charts.js";
import { ACTIVE_STATUSES, errorBox, fill, formatNumber, h, statusBadge } from "./dom.js";

const REFRESH_EVERY_MS = 10_000;
const COMPARED = [
  { id: "train-loss", title: "Training loss", split: "train", name: "loss", yTitle: "loss" },
  { id: "eval-loss", title: "Masked-LM loss, in-domain (held out)", split: "eval", name: "masked_lm_loss", yTitle: "loss" },
  {
    id: "reference-loss",
    title: "Masked-LM loss, reference text (forgetting)",
    split: "reference",
    name: "masked_lm_loss",
    yTitle: "loss",
  },
  { id: "eval-accuracy", title: "Masked-LM accuracy, in-domain", split: "eval", name: "masked_lm_accuracy", yTitle: "accuracy" },
  {
    id: "nsp-accuracy",
    title: "Next-sentence accuracy, in-domain",
    split: "eval",
    name: "next_sentence_accuracy",
    yTitle: "accuracy",
  },
];
const NAMES = [...new Set(COMPARED.map((metric) => metric.name))].join(",");

export function compareView(main, [ids]) {
  const runIds = [...new Set((ids ?? "").split(",").filter(Boolean))];
  return runIds.length >= 2 ? comparison(main, runIds) : picker(main, runIds);
}

function picker(main, preselected) {
  const controller = new AbortController();
  const selected = new Set(preselected);
  const button = h("button", { id: "compare-go", class: "primary", disabled: selected.size < 2 }, "Compare");
  button.addEventListener("click", () => {
    location.hash = `#/compare/${[...selected].join(",")}`;
  });
  const list = h("div", {}, h("p", { class: "muted" }, "Loading the runs…"));
  fill(main, h("h1", {}, "Compare runs"), h("p", {}, "Pick two runs or more."), list, button);
  getJson("/v1/runs?limit=100", { signal: controller.signal })
    .then((page) =>
      fill(
        list,
        h(
          "ul",
          { class: "picker" },
          page.data.map((run) =>
            h(
              "li",
              {},
              h(
                "label",
                {},
                h("input", {
                  type: "checkbox",
                  value: run.id,
                  checked: selected.has(run.id),
                  onchange: (event) => {
                    if (event.target.checked) selected.add(run.id);
                    else selected.delete(run.id);
                    button.disabled = selected.size < 2;
                  },
                }),
                ` ${run.name} `,
                statusBadge(run.status),
                h("span", { class: "muted mono small" }, ` ${run.id}`),
              ),
            ),
          ),
        ),
      ),
    )
    .catch((error) => error.name !== "AbortError" && fill(list, errorBox(error)));
  return () => controller.abort();
}

function comparison(main, runIds) {
  const controller = new AbortController();
  const { signal } = controller;
  const charts = COMPARED.map((metric) => ({ metric, chart: new Chart(`compare-${metric.id}`, metric) }));
  const table = h("section", { class: "card" });
  const problem = h("div");
  let timer = null;
  fill(
    main,
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, `Compare ${runIds.length} runs`),
      h("a", { href: `#/compare`, class: "button" }, "Pick other runs"),
    ),
    problem,
    table,
    h("section", { class: "charts" }, charts.map(({ chart }) => chart.element)),
  );

  async function load() {
    const loaded = await Promise.all(
      runIds.map(async (id) => {
        const [run, metrics] = await Promise.all([
          getJson(`/v1/runs/${id}`, { signal }),
          getJson(`/v1/runs/${id}/metrics?names=${NAMES}&max_points=1000`, { signal }),
        ]);
        const store = new SeriesStore();
        store.load(metrics);
        return { run, store };
      }),
    );
    fill(problem);
    const labels = labelsOf(loaded.map(({ run }) => run));
    for (const { metric, chart } of charts) {
      const traces = loaded
        .map(({ run, store }, index) => ({ run, series: store.get(metric.split, metric.name), index }))
        .filter(({ series }) => series?.steps.length)
        .map(({ run, series, index }) => ({
          uid: run.id,
          label: labels[index],
          color: COLORS[index % COLORS.length],
          x: [...series.steps],
          y: [...series.values],
        }));
      chart.draw(traces);
    }
    renderTable(loaded.map(({ run }) => run), labels);
    return loaded.some(({ run }) => ACTIVE_STATUSES.has(run.status));
  }

  function renderTable(runs, labels) {
    const cell = (run, split) => {
      const before = run.baseline?.[split]?.masked_lm_loss;
      const after = run.latest?.[split]?.masked_lm_loss;
      if (typeof before !== "number" && typeof after !== "number") return "—";
      return `${formatNumber(before)} → ${formatNumber(after)}`;
    };
    fill(
      table,
      h(
        "table",
        { class: "table", id: "compared-runs" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["", "run", "status", "steps", "learning rate", "batch", "in-domain MLM loss", "reference MLM loss"].map((t) =>
              h("th", {}, t),
            ),
          ),
        ),
        h(
          "tbody",
          {},
          runs.map((run, index) =>
            h(
              "tr",
              { dataset: { runId: run.id } },
              h("td", {}, h("span", { class: "swatch", style: `background: ${COLORS[index % COLORS.length]}` })),
              h("td", {}, h("a", { href: `#/runs/${run.id}` }, labels[index])),
              h("td", {}, statusBadge(run.status)),
              h("td", { class: "number" }, `${run.progress?.step ?? 0} / ${run.progress?.total_steps ?? "—"}`),
              h("td", { class: "number" }, formatNumber(run.hyperparameters?.learning_rate)),
              h("td", { class: "number" }, formatNumber(run.hyperparameters?.batch_size)),
              h("td", { class: "number" }, cell(run, "eval")),
              h("td", { class: "number" }, cell(run, "reference")),
            ),
          ),
        ),
      ),
    );
  }

  async function refresh() {
    try {
      const active = await load();
      if (active) timer = setTimeout(refresh, REFRESH_EVERY_MS);
    } catch (error) {
      if (error.name !== "AbortError") fill(problem, errorBox(error));
    }
  }

  refresh();
  return () => {
    controller.abort();
    clearTimeout(timer);
    for (const { chart } of charts) chart.purge();
  };
}

/** Names to tell the runs apart: a run's name, with its id when another run has the same name. */
function labelsOf(runs) {
  return runs.map((run) =>
    runs.filter((other) => other.name === run.name).length > 1 ? `${run.name} (${run.id.slice(-6)})` : run.name,
  );
}
