// A run's page: its state, live charts, checkpoints (downloads), downstream comparison, events. The first
// picture comes from the REST reads (the metrics downsampled by the server); then the live stream
// (GET /v1/runs/{id}/stream) appends what happens, until the run ends.

import { download, getJson, listAll, request } from "./api.js";
import { Chart, SeriesStore, runCharts } from "./charts.js";
import {
  ACTIVE_STATUSES,
  TERMINAL_STATUSES,
  errorBox,
  fill,
  formatBytes,
  formatDuration,
  formatNumber,
  formatTime,
  h,
  progressBar,
  statusBadge,
} from "./dom.js";
import { followStream } from "./sse.js";

// The stream is read from a little before the metrics were (ids are Redis stream ids, "<ms>-<seq>", in the
// server's clock, which the Date header of the metrics response tells): what it repeats is merged, and the
// margin covers a clock of Redis that differs from the API's. Without the header: from the start.
const REPLAY_MARGIN_MS = 5 * 60 * 1000;
const DRAW_EVERY_MS = 250;
const REFRESH_EVERY_MS = 10_000; // a queued run's ETA, a downstream comparison in progress
const MAX_POINTS = 1000; // per series, on the first load
const EVALUATION_METRICS = [
  ["masked_lm_loss", "masked-LM loss", "lower"],
  ["masked_lm_accuracy", "masked-LM accuracy", "higher"],
  ["perplexity", "perplexity", "lower"],
  ["next_sentence_accuracy", "next-sentence accuracy", "higher"],
];
const DOWNSTREAM_ACTIVE = new Set(["queued", "running", "cancelling"]);

export function runView(main, [runId]) {
  const controller = new AbortController();
  const { signal } = controller;
  const store = new SeriesStore();
  const state = { run: null, events: new Map(), checkpoints: new Map(), connection: "" };
  const charts = runCharts(() => state.run?.baseline).map((definition) => ({
    definition,
    chart: new Chart(definition.id, definition),
  }));
  const timers = [];

  const header = h("section", { class: "run-header" });
  const notices = h("div", { class: "notices" });
  const summary = h("section", { class: "card" });
  const comparison = h("section", { class: "card" });
  const chartGrid = h("section", { class: "charts" }, charts.map(({ chart }) => chart.element));
  const checkpointsBox = h("section", { class: "card", id: "checkpoints" });
  const downstreamBox = h("section", { class: "card", id: "downstream" });
  const eventsBox = h("section", { class: "card", id: "events" });
  const hyperparametersBox = h("section", { class: "card" });

  fill(main, h("p", { class: "muted" }, "Loading the run…"));

  // -- drawing ------------------------------------------------------------------------------------------

  let pendingDraw = null;
  const dirty = new Set();
  function drawCharts(splits) {
    for (const split of splits) dirty.add(split);
    if (pendingDraw) return;
    pendingDraw = setTimeout(() => {
      pendingDraw = null;
      for (const { definition, chart } of charts) {
        if (definition.traces.some((trace) => dirty.has(trace.split))) chart.drawSeries(store, definition);
      }
      dirty.clear();
    }, DRAW_EVERY_MS);
  }

  function notify(error) {
    notices.append(errorBox(error));
  }

  function renderHeader() {
    const run = state.run;
    const actions = [];
    if (ACTIVE_STATUSES.has(run.status) && run.status !== "cancelling" && !run.cancel_requested) {
      actions.push(h("button", { class: "danger", id: "cancel-run", onclick: cancel }, "Cancel run"));
    }
    if (run.status === "failed" || run.status === "cancelled") {
      actions.push(h("button", { id: "resume-run", onclick: resume }, "Resume"));
    }
    fill(
      header,
      h(
        "div",
        { class: "title-row" },
        h("h1", {}, run.name),
        statusBadge(run.status),
        h("span", { class: `connection connection-${state.connection}`, id: "connection" }, connectionText()),
      ),
      h("div", { class: "muted mono" }, run.id),
      h("div", { class: "actions" }, actions, h("a", { href: `#/compare/${run.id}`, class: "button" }, "Compare…")),
    );
  }

  function connectionText() {
    return { open: "● live", retrying: "reconnecting…", ended: "", "": "" }[state.connection] ?? "";
  }

  function renderSummary() {
    const run = state.run;
    const progress = run.progress ?? {};
    const eta = run.status === "running" ? (progress.eta_seconds ?? run.eta_seconds) : run.eta_seconds;
    const rows = [
      ["Base model", h("span", { class: "mono" }, run.base_model)],
      ["Corpus", h("span", { class: "mono" }, run.corpus_id ?? "deleted")],
      run.reference_corpus_id ? ["Reference corpus", h("span", { class: "mono" }, run.reference_corpus_id)] : null,
      run.replay_corpus_id ? ["Replay corpus", h("span", { class: "mono" }, run.replay_corpus_id)] : null,
      ["Progress", progressBar(progress)],
      ["ETA", h("span", { id: "eta" }, ACTIVE_STATUSES.has(run.status) ? formatDuration(eta) : "—")],
      ["Tokens/s", formatNumber(progress.tokens_per_second, 3)],
      ["Tokens seen", formatNumber(progress.tokens_seen)],
      ["Attempt", String(run.attempt)],
      ["Created", formatTime(run.created_at)],
      ["Started", formatTime(run.started_at)],
      ["Finished", formatTime(run.finished_at)],
    ].filter(Boolean);
    const selected = run.selected_checkpoint;
    fill(
      summary,
      h("dl", { class: "facts" }, rows.map(([label, value]) => [h("dt", {}, label), h("dd", {}, value)])),
      run.error
        ? h("div", { class: "error", role: "alert" }, h("strong", {}, `${run.error.type}: `), run.error.message)
        : null,
      run.warnings?.length
        ? h("ul", { class: "warnings" }, run.warnings.map((w) => h("li", {}, h("strong", {}, w.code), `: ${w.message}`)))
        : null,
      selected ? h("p", {}, `The model holds the weights of step ${selected.step} (${selected.reason ?? "selected"}).`) : null,
      run.stopped_early ? h("p", {}, `Stopped early: ${run.stopped_early.reason ?? JSON.stringify(run.stopped_early)}`) : null,
    );
  }

  function renderComparison() {
    const { baseline = {}, latest = {} } = state.run;
    const rows = [];
    for (const split of ["eval", "reference"]) {
      for (const [name, label, better] of EVALUATION_METRICS) {
        const before = baseline[split]?.[name];
        const after = latest[split]?.[name];
        if (typeof before !== "number" && typeof after !== "number") continue;
        const change = typeof before === "number" && typeof after === "number" ? after - before : null;
        const worse = change !== null && (better === "lower" ? change > 0 : change < 0);
        rows.push(
          h(
            "tr",
            { class: worse ? "worse" : "" },
            h("td", {}, split === "eval" ? "in-domain" : "reference"),
            h("td", {}, label),
            h("td", { class: "number" }, formatNumber(before)),
            h("td", { class: "number" }, formatNumber(after)),
            h("td", { class: "number" }, change === null ? "—" : `${change > 0 ? "+" : ""}${formatNumber(change, 3)}`),
          ),
        );
      }
    }
    const latestStep = latest.eval?.step ?? latest.reference?.step;
    fill(
      comparison,
      h("h2", {}, "Baseline (step 0) and latest evaluation", latestStep !== undefined ? ` (step ${latestStep})` : ""),
      rows.length
        ? h(
            "table",
            { class: "table" },
            h("thead", {}, h("tr", {}, ["split", "metric", "baseline", "latest", "change"].map((t) => h("th", {}, t)))),
            h("tbody", {}, rows),
          )
        : h("p", { class: "muted" }, "No evaluation yet."),
      rows.some((row) => row.classList.contains("worse"))
        ? h("p", { class: "muted" }, "Rows in red moved the wrong way. A rise of the reference loss is forgetting.")
        : null,
    );
  }

  function renderCheckpoints() {
    const run = state.run;
    const steps = [...state.checkpoints.values()].sort((a, b) => a.step - b.step);
    const rows = steps.map((checkpoint) =>
      h(
        "tr",
        { dataset: { step: String(checkpoint.step) } },
        h("td", { class: "number" }, String(checkpoint.step)),
        h("td", {}, formatTime(checkpoint.created_at)),
        h("td", { class: "number" }, formatBytes(checkpoint.size_bytes)),
        h("td", { class: "number" }, formatNumber(checkpoint.metrics?.train?.loss)),
        h("td", { class: "number" }, formatNumber(checkpoint.metrics?.eval?.masked_lm_loss)),
        h("td", {}, downloadButton(`/v1/runs/${run.id}/checkpoints/${checkpoint.step}/download`, "Download", `download-checkpoint-${checkpoint.step}`)),
      ),
    );
    fill(
      checkpointsBox,
      h("h2", {}, "Checkpoints"),
      run.status === "succeeded"
        ? h("p", {}, downloadButton(`/v1/runs/${run.id}/model`, "Download final model", "download-model"))
        : null,
      rows.length
        ? h(
            "table",
            { class: "table" },
            h("thead", {}, h("tr", {}, ["step", "saved", "size", "train loss", "last eval masked-LM loss", ""].map((t) => h("th", {}, t)))),
            h("tbody", {}, rows),
          )
        : h("p", { class: "muted" }, "No checkpoint kept yet."),
    );
  }

  function downloadButton(path, label, id) {
    const status = h("span", { class: "muted download-status" });
    const button = h("button", { id }, label);
    button.addEventListener("click", async () => {
      button.disabled = true;
      status.textContent = " starting…";
      try {
        const { filename, bytes } = await download(path, {
          signal,
          onProgress: (received, total) => {
            status.textContent = ` ${formatBytes(received)}${total ? ` of ${formatBytes(total)}` : ""}`;
          },
        });
        status.textContent = ` saved ${filename} (${formatBytes(bytes)})`;
      } catch (error) {
        if (error.name === "AbortError") return;
        status.textContent = "";
        status.append(errorBox(error));
      } finally {
        button.disabled = false;
      }
    });
    return h("span", {}, button, status);
  }

  function renderDownstream() {
    const downstream = state.run.downstream;
    if (!downstream) {
      fill(downstreamBox);
      downstreamBox.hidden = true;
      return;
    }
    downstreamBox.hidden = false;
    const result = downstream.result;
    const progress = downstream.progress;
    fill(
      downstreamBox,
      h("h2", {}, "Did it help? Downstream comparison"),
      h(
        "p",
        {},
        `${downstream.method} on dataset `,
        h("span", { class: "mono" }, downstream.dataset_id),
        `, ${downstream.seeds} seed(s): `,
        downstream.status ? statusBadge(downstream.status) : "queued when the run succeeds",
        progress?.total ? ` ${progress.done ?? 0} / ${progress.total} fits` : "",
      ),
      downstream.error ? errorBox(downstream.error) : null,
      result
        ? h(
            "table",
            { class: "table", id: "downstream-result" },
            h("thead", {}, h("tr", {}, ["model", "accuracy (%)", "macro-F1 (%)", "Δ accuracy vs base (95% CI)", "Δ macro-F1 vs base (95% CI)"].map((t) => h("th", {}, t)))),
            h("tbody", {}, result.models.map((model) =>
              h(
                "tr",
                {},
                h("td", { class: "mono" }, model.model),
                h("td", { class: "number" }, summaryText(model.accuracy)),
                h("td", { class: "number" }, summaryText(model.macro_f1)),
                h("td", { class: "number" }, differenceText(model.difference_vs_first?.accuracy)),
                h("td", { class: "number" }, differenceText(model.difference_vs_first?.macro_f1)),
              ),
            )),
          )
        : null,
    );
  }

  function renderEvents() {
    const events = [...state.events.values()].sort((a, b) => b.id - a.id);
    fill(
      eventsBox,
      h("h2", {}, `Events (${events.length})`),
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          { class: "table" },
          h("thead", {}, h("tr", {}, ["time", "level", "type", "message"].map((t) => h("th", {}, t)))),
          h("tbody", {}, events.map((event) =>
            h(
              "tr",
              { class: `level-${event.level}` },
              h("td", { class: "nowrap" }, formatTime(event.created_at)),
              h("td", {}, event.level),
              h("td", { class: "mono" }, event.type),
              h("td", {}, event.message),
            ),
          )),
        ),
      ),
    );
  }

  function renderAll() {
    renderHeader();
    renderSummary();
    renderComparison();
    renderCheckpoints();
    renderDownstream();
    renderEvents();
    fill(
      hyperparametersBox,
      h("details", {}, h("summary", {}, "Hyperparameters"), h("pre", {}, JSON.stringify(state.run.hyperparameters, null, 2))),
    );
  }

  // -- actions ------------------------------------------------------------------------------------------

  async function cancel() {
    if (!window.confirm(`Cancel run ${state.run.name}? It stops at its next step and keeps a checkpoint.`)) return;
    try {
      state.run = await getJson(`/v1/runs/${runId}/cancel`, { method: "POST", signal });
      renderAll();
    } catch (error) {
      if (error.name !== "AbortError") notify(error);
    }
  }

  async function resume() {
    try {
      const response = await request(`/v1/runs/${runId}/resume`, { method: "POST", signal });
      state.run = await response.json();
      renderAll();
      follow(streamStart(response));
    } catch (error) {
      if (error.name !== "AbortError") notify(error);
    }
  }

  /** Read the run again; `previous`: the status the page knew before (its change reloads more). */
  async function refreshRun(previous = state.run.status) {
    state.run = await getJson(`/v1/runs/${runId}`, { signal });
    renderAll();
    if (state.run.status !== previous) {
      refreshCheckpoints(); // the final ones
      if (TERMINAL_STATUSES.has(state.run.status)) {
        // The whole picture once more, as the server keeps it: the stream ends at the run's last status,
        // and a point published after it would never come.
        store.load(await getJson(`/v1/runs/${runId}/metrics?max_points=${MAX_POINTS}`, { signal }));
      }
      drawCharts(["train", "eval", "reference"]); // and the baselines
    }
  }

  // One read of the checkpoints at a time; asked again meanwhile, it reads once more after.
  let checkpointsRead = null;
  let checkpointsAgain = false;
  function refreshCheckpoints() {
    if (checkpointsRead) {
      checkpointsAgain = true;
      return;
    }
    checkpointsRead = getJson(`/v1/runs/${runId}/checkpoints`, { signal })
      .then((checkpoints) => {
        state.checkpoints = new Map(checkpoints.map((checkpoint) => [checkpoint.step, checkpoint]));
        renderCheckpoints();
      })
      .catch((error) => error.name !== "AbortError" && notify(error))
      .finally(() => {
        checkpointsRead = null;
        if (checkpointsAgain && !signal.aborted) {
          checkpointsAgain = false;
          refreshCheckpoints();
        }
      });
  }

  // -- the live stream ------------------------------------------------------------------------------------

  function onEvent({ event, data }) {
    const message = JSON.parse(data);
    if (event === "metric") {
      store.addRecord(message);
      if (message.split !== "train") {
        state.run.latest = { ...state.run.latest, [message.split]: { ...message.metrics, step: message.step } };
        if (message.step === 0 && !state.run.baseline?.[message.split]) {
          state.run.baseline = { ...state.run.baseline, [message.split]: { ...message.metrics, step: 0 } };
        }
        renderComparison();
      }
      drawCharts([message.split]);
    } else if (event === "status") {
      const previous = state.run.status;
      Object.assign(state.run, { status: message.status, progress: message.progress, error: message.error });
      if (message.status !== previous) {
        refreshRun(previous).catch((error) => error.name !== "AbortError" && notify(error));
      } else {
        renderHeader();
        renderSummary();
      }
    } else if (event === "event") {
      state.events.set(message.id, message);
      renderEvents();
    } else if (event === "checkpoint" || event === "rewind") {
      // A new checkpoint may rotate an older one out (keep_checkpoints), a rewind supersedes the later
      // ones: the list is read again, as the API keeps it.
      refreshCheckpoints();
      if (event === "rewind") {
        store.rewind(message.step);
        drawCharts(["train", "eval", "reference"]);
      }
    }
  }

  function setConnection(connection) {
    state.connection = connection;
    const badge = header.querySelector("#connection");
    if (badge) {
      badge.className = `connection connection-${connection}`;
      badge.textContent = connectionText();
    }
  }

  function follow(lastEventId) {
    followStream(`/v1/runs/${runId}/stream`, {
      lastEventId,
      signal,
      onEvent,
      onState: setConnection,
      ended: ({ event, data }) => (event === "status" ? TERMINAL_STATUSES.has(JSON.parse(data).status) : undefined),
      // The stream closed without the run's end (the API restarted, Redis went away): go on unless it ended.
      reconnect: async () => {
        await refreshRun();
        return !TERMINAL_STATUSES.has(state.run.status);
      },
    }).catch((error) => {
      if (error.name !== "AbortError") notify(error);
    });
  }

  // -- first load ------------------------------------------------------------------------------------------

  async function load() {
    const [run, metrics, events, checkpoints] = await Promise.all([
      getJson(`/v1/runs/${runId}`, { signal }),
      request(`/v1/runs/${runId}/metrics?max_points=${MAX_POINTS}`, { signal }),
      listAll(`/v1/runs/${runId}/events`, { signal }),
      getJson(`/v1/runs/${runId}/checkpoints`, { signal }),
    ]);
    state.run = run;
    store.load(await metrics.json());
    for (const event of events) state.events.set(event.id, event);
    for (const checkpoint of checkpoints) state.checkpoints.set(checkpoint.step, checkpoint);
    fill(main, header, notices, summary, comparison, chartGrid, checkpointsBox, downstreamBox, eventsBox, hyperparametersBox);
    renderAll();
    for (const { definition, chart } of charts) chart.drawSeries(store, definition);

    if (!TERMINAL_STATUSES.has(run.status)) follow(streamStart(metrics));
    timers.push(
      setInterval(() => {
        const status = state.run.status;
        const downstream = state.run.downstream;
        const waiting = status === "queued" || status === "preparing";
        const comparing =
          downstream && status === "succeeded" && (!downstream.status || DOWNSTREAM_ACTIVE.has(downstream.status));
        if (waiting || comparing) refreshRun().catch((error) => error.name !== "AbortError" && notify(error));
      }, REFRESH_EVERY_MS),
    );
  }

  load().catch((error) => {
    if (error.name !== "AbortError") fill(main, errorBox(error), h("p", {}, h("a", { href: "#/runs" }, "Back to the runs")));
  });

  return () => {
    controller.abort();
    clearTimeout(pendingDraw);
    for (const timer of timers) clearInterval(timer);
    for (const { chart } of charts) chart.purge();
  };
}

/** Where to start reading the stream, for a page that has just read what `response` answered. */
function streamStart(response) {
  const serverTime = Date.parse(response.headers.get("Date") ?? "");
  return Number.isFinite(serverTime) ? `${Math.max(0, serverTime - REPLAY_MARGIN_MS)}-0` : null;
}

function summaryText(summary) {
  if (!summary) return "—";
  const mean = (100 * summary.mean).toFixed(1);
  return summary.sd === null || summary.sd === undefined ? mean : `${mean} ± ${(100 * summary.sd).toFixed(1)}`;
}

function differenceText(difference) {
  if (!difference) return "baseline";
  const signed = (value) => `${value >= 0 ? "+" : ""}${(100 * value).toFixed(1)}`;
  if (difference.ci_low === null || difference.ci_high === null) return signed(difference.mean);
  const excludesZero = difference.ci_low > 0 || difference.ci_high < 0;
  return `${signed(difference.mean)} [${signed(difference.ci_low)}, ${signed(difference.ci_high)}]${excludesZero ? " *" : ""}`;
}
