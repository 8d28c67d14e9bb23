// Metric curves: a store of series (split/name -> steps, values) filled from GET /v1/runs/{id}/metrics and
// grown by the live stream's `metric` messages, and charts drawn from it with Plotly.js (served by the API
// from the installed plotly package; a global script, loaded before the modules).

import { h } from "./dom.js";

export const COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"];
const SPLIT_COLORS = { eval: COLORS[0], reference: COLORS[1] };
const SPLIT_LABELS = { eval: "in-domain (held out)", reference: "reference (general text)" };

export const seriesKey = (split, name) => `${split}/${name}`;
// A trace's uid, as Plotly wants it (it becomes part of CSS class names): "train-loss", "eval-masked_lm_loss".
export const traceUid = (split, name) => `${split}-${name}`;

/** The points of a run's metrics, by series, steps ascending. */
export class SeriesStore {
  constructor() {
    this.series = new Map(); // key -> {steps: number[], values: (number|null)[]}
  }

  get(split, name) {
    return this.series.get(seriesKey(split, name));
  }

  points(split, name) {
    return this.get(split, name)?.steps.length ?? 0;
  }

  /** Replace everything with the series of a metrics response ({series: [{split, name, points}]}). */
  load(response) {
    this.series.clear();
    for (const { split, name, points } of response.series) {
      this.series.set(seriesKey(split, name), {
        steps: points.map(([step]) => step),
        values: points.map(([, value]) => value),
      });
    }
  }

  /**
   * Add one stream `metric` message ({split, step, metrics}); a step already there is replaced. A null is
   * a point (a gap in the curve) only when `metrics.non_finite` names it (NaN, infinity); otherwise the
   * metric has no value at that step (as the REST series have no point).
   */
  addRecord({ split, step, metrics }) {
    const nonFinite = metrics.non_finite ?? {};
    for (const [name, value] of Object.entries(metrics)) {
      if (name === "non_finite" || !(typeof value === "number" || (value === null && name in nonFinite))) continue;
      const key = seriesKey(split, name);
      let series = this.series.get(key);
      if (!series) {
        series = { steps: [], values: [] };
        this.series.set(key, series);
      }
      const last = series.steps.length ? series.steps[series.steps.length - 1] : -Infinity;
      if (step > last) {
        series.steps.push(step);
        series.values.push(value);
      } else {
        const index = series.steps.indexOf(step);
        if (index >= 0) series.values[index] = value; // the same step again (a retried write)
        // an older step missing from a downsampled series: the downsampled picture already covers it
      }
    }
  }

  /** A new attempt resumes from the checkpoint of `step` (null: from the start): later points go. */
  rewind(step) {
    const keep = step ?? -1;
    for (const series of this.series.values()) {
      let end = series.steps.length;
      while (end > 0 && series.steps[end - 1] > keep) end -= 1;
      series.steps.length = end;
      series.values.length = end;
    }
  }
}

/**
 * A label as Plotly shows it: Plotly reads tags in text (<a href>, <b>, <span style>...), so the "<", ">" and
 * "&" of a run's name (the compare view's legend) are written as entities, which it shows as typed.
 */
export function plotlyText(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function plotly() {
  if (!window.Plotly) throw new Error("the charting library (/ui/vendor/plotly.min.js) did not load");
  return window.Plotly;
}

/**
 * A chart of some series. `traces`: [{split, name, label, color, dash, yaxis: "y2"?}] (series without
 * points are left out); `baselines`: [{value, label, color}] drawn as dashed horizontal lines across the
 * chart (a run's step-0 evaluation); `y2Title` titles a right-hand axis for traces with yaxis "y2".
 */
export class Chart {
  constructor(id, { title, yTitle, y2Title = null }) {
    this.title = title;
    this.yTitle = yTitle;
    this.y2Title = y2Title;
    this.revision = 0;
    this.element = h("div", { class: "chart", id: `chart-${id}`, "data-chart": id });
  }

  /** Draw `traces` (each {x, y, label, color, dash, yaxis, uid}) and `baselines`. */
  draw(traces, baselines = []) {
    this.revision += 1;
    const data = traces.map((trace) => ({
      type: "scatter",
      mode: trace.x.length > 1 ? "lines" : "lines+markers",
      uid: trace.uid,
      name: plotlyText(trace.label),
      x: trace.x,
      y: trace.y,
      yaxis: trace.yaxis ?? "y",
      line: { color: trace.color, width: 2, dash: trace.dash ?? "solid" },
      connectgaps: false,
    }));
    const shapes = baselines.map((baseline) => ({
      type: "line",
      xref: "paper",
      x0: 0,
      x1: 1,
      yref: "y",
      y0: baseline.value,
      y1: baseline.value,
      line: { color: baseline.color, width: 1.5, dash: "dash" },
      name: baseline.label,
      showlegend: true,
    }));
    const y2 = this.y2Title && data.some((trace) => trace.yaxis === "y2");
    const layout = {
      title: { text: this.title, font: { size: 14 }, x: 0.02, xanchor: "left" },
      height: 340,
      // The legend sits at the bottom of the chart's box (yref "container"), where Plotly reserves its
      // rows; the axis's tick labels and title get their room above it (automargin): never one over the
      // other, however many rows the legend wraps to.
      margin: { l: 60, r: y2 ? 60 : 20, t: 40, b: 10 },
      xaxis: { title: { text: "step", standoff: 6 }, rangemode: "tozero", automargin: true },
      yaxis: { title: { text: this.yTitle }, exponentformat: "e" },
      showlegend: true, // even for one line: the compare view names its run there
      legend: { orientation: "h", x: 0, xanchor: "left", y: 0, yanchor: "bottom", yref: "container" },
      shapes,
      datarevision: this.revision,
      uirevision: "keep", // a zoom stays as points arrive
      annotations: data.length
        ? []
        : [{ text: "no points yet", xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false }],
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
    };
    if (y2) {
      layout.yaxis2 = { title: { text: this.y2Title }, overlaying: "y", side: "right", rangemode: "tozero" };
    }
    plotly().react(this.element, data, layout, { responsive: true, displaylogo: false });
  }

  /** The chart of `definition` from a run's series (see RUN_CHARTS). */
  drawSeries(store, definition) {
    const traces = [];
    for (const trace of definition.traces) {
      const series = store.get(trace.split, trace.name);
      if (!series || !series.values.some((value) => value !== null)) continue; // none, or none finite
      traces.push({ ...trace, uid: traceUid(trace.split, trace.name), x: [...series.steps], y: [...series.values] });
    }
    this.draw(traces, definition.baselines?.() ?? []);
  }

  purge() {
    if (window.Plotly) window.Plotly.purge(this.element);
  }
}

/** In-domain and reference curves of an evaluation metric, with their step-0 values as baselines. */
function evaluationChart(id, title, name, yTitle, baseline) {
  return {
    id,
    title,
    yTitle,
    traces: ["eval", "reference"].map((split) => ({
      split,
      name,
      label: SPLIT_LABELS[split],
      color: SPLIT_COLORS[split],
    })),
    baselines: () =>
      ["eval", "reference"]
        .filter((split) => typeof baseline()?.[split]?.[name] === "number")
        .map((split) => ({
          value: baseline()[split][name],
          label: `${split === "eval" ? "in-domain" : "reference"} baseline (step 0)`,
          color: SPLIT_COLORS[split],
        })),
  };
}

/** The charts of a run page; `baseline()` returns the run's baseline ({eval: {...}, reference: {...}}). */
export function runCharts(baseline) {
  return [
    {
      id: "train-loss",
      title: "Training loss",
      yTitle: "loss",
      traces: [
        { split: "train", name: "loss", label: "loss (sum)", color: COLORS[4] },
        { split: "train", name: "masked_lm_loss", label: "masked-LM", color: COLORS[0] },
        { split: "train", name: "next_sentence_loss", label: "next sentence", color: COLORS[2] },
      ],
    },
    {
      id: "learning-rate",
      title: "Learning rate",
      yTitle: "learning rate",
      traces: [{ split: "train", name: "learning_rate", label: "learning rate", color: COLORS[3] }],
    },
    {
      id: "throughput",
      title: "Throughput",
      yTitle: "tokens / s",
      y2Title: "MFU",
      traces: [
        { split: "train", name: "tokens_per_second", label: "tokens/s", color: COLORS[5] },
        { split: "train", name: "mfu", label: "MFU", color: COLORS[6], yaxis: "y2" },
      ],
    },
    evaluationChart("eval-loss", "Masked-LM loss (evaluation)", "masked_lm_loss", "loss", baseline),
    evaluationChart("eval-accuracy", "Masked-LM accuracy (evaluation)", "masked_lm_accuracy", "accuracy", baseline),
    evaluationChart("perplexity", "Perplexity (evaluation)", "perplexity", "perplexity", baseline),
    evaluationChart(
      "nsp-accuracy",
      "Next-sentence accuracy (evaluation)",
      "next_sentence_accuracy",
      "accuracy",
      baseline,
    ),
  ];
}
