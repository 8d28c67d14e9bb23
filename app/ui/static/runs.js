// The runs list: status, progress and ETA of each run, refreshed while shown; runs picked for comparison.

import { getJson } from "./api.js";
import { ACTIVE_STATUSES, errorBox, fill, formatDuration, formatTime, h, progressBar, statusBadge } from "./dom.js";

const PAGE = 50;
const REFRESH_EVERY_MS = 5000;

export function runsView(main) {
  const controller = new AbortController();
  const { signal } = controller;
  const selected = new Set();
  let newest = []; // the first page, refreshed
  let older = []; // the pages loaded with "More"
  let cursor = null;

  const body = h("tbody", { id: "runs" });
  const problem = h("div");
  const compareButton = h("button", { id: "compare-selected", disabled: true, onclick: compare }, "Compare selected");
  const moreButton = h("button", { id: "more-runs", hidden: true, onclick: more }, "More");
  fill(
    main,
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, "Runs"),
      h("a", { href: "#/new", class: "button primary" }, "New run"),
      compareButton,
    ),
    problem,
    h(
      "table",
      { class: "table runs" },
      h(
        "thead",
        {},
        h("tr", {}, ["", "name", "status", "progress", "ETA", "base model", "created"].map((t) => h("th", {}, t))),
      ),
      body,
    ),
    moreButton,
  );

  function render() {
    const runs = [...newest, ...older.filter((run) => !newest.some((other) => other.id === run.id))];
    fill(
      body,
      runs.length
        ? runs.map((run) =>
            h(
              "tr",
              { dataset: { runId: run.id } },
              h(
                "td",
                {},
                h("input", {
                  type: "checkbox",
                  "aria-label": `select ${run.name} for comparison`,
                  checked: selected.has(run.id),
                  onchange: (event) => {
                    if (event.target.checked) selected.add(run.id);
                    else selected.delete(run.id);
                    compareButton.disabled = selected.size < 2;
                  },
                }),
              ),
              h("td", {}, h("a", { href: `#/runs/${run.id}` }, run.name), h("div", { class: "muted mono small" }, run.id)),
              h("td", {}, statusBadge(run.status)),
              h("td", {}, progressBar(run.progress)),
              h("td", { class: "eta" }, ACTIVE_STATUSES.has(run.status) ? formatDuration(run.eta_seconds) : "—"),
              h("td", { class: "mono small" }, run.base_model),
              h("td", { class: "nowrap" }, formatTime(run.created_at)),
            ),
          )
        : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No runs yet. ", h("a", { href: "#/new" }, "Start one."))),
    );
    moreButton.hidden = !cursor;
  }

  async function refresh() {
    try {
      const page = await getJson(`/v1/runs?limit=${PAGE}`, { signal });
      newest = page.data;
      if (!older.length) cursor = page.next_cursor;
      fill(problem);
      render();
    } catch (error) {
      if (error.name !== "AbortError") fill(problem, errorBox(error));
    }
  }

  async function more() {
    try {
      const page = await getJson(`/v1/runs?limit=${PAGE}&after=${encodeURIComponent(cursor)}`, { signal });
      older.push(...page.data);
      cursor = page.next_cursor;
      render();
    } catch (error) {
      if (error.name !== "AbortError") fill(problem, errorBox(error));
    }
  }

  function compare() {
    location.hash = `#/compare/${[...selected].join(",")}`;
  }

  refresh();
  const timer = setInterval(() => {
    if (!document.hidden) refresh();
  }, REFRESH_EVERY_MS);
  return () => {
    controller.abort();
    clearInterval(timer);
  };
}
