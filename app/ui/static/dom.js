// Small DOM and formatting helpers. Text always goes in as text (never as HTML): names, messages and
// errors come from users and the API.

/** An element: h("a", {href: "#/runs", class: "x", onclick: fn}, "text", child, [more]). */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "value" || name === "checked" || name === "disabled") element[name] = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** An API error (or any error) as a box: its message, and the parameter it concerns when it names one. */
export function errorBox(error) {
  const message = error?.message ?? String(error);
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", {}, error?.type && error.type !== "error" ? `${error.type}: ` : "Error: "),
    message,
    error?.param ? h("span", { class: "param" }, ` (parameter: ${error.param})`) : null,
  );
}

export const ACTIVE_STATUSES = new Set(["queued", "preparing", "running", "cancelling"]);
export const TERMINAL_STATUSES = new Set(["succeeded", "failed", "cancelled"]);

export function statusBadge(status) {
  return h("span", { class: `status status-${status}`, "data-status": status }, status);
}

/** "2 h 05 min", "3 min 07 s", "12 s"; "—" for null. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  const minutes = Math.floor(s / 60);
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** A metric value: 4 significant digits, exponent notation for the very small (learning rates). */
export function formatNumber(value, digits = 4) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  if (value !== 0 && Math.abs(value) < 1e-3) return value.toExponential(2);
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return Number(value.toPrecision(digits)).toString();
}

export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** A progress bar with "step / total". */
export function progressBar(progress) {
  const step = progress?.step ?? 0;
  const total = progress?.total_steps;
  const fraction = total ? Math.min(1, step / total) : 0;
  return h(
    "div",
    { class: "progress", title: total ? `${step} of ${total} steps` : "not started" },
    h("div", { class: "progress-bar", style: `width: ${(100 * fraction).toFixed(1)}%` }),
    h("span", { class: "progress-text" }, total ? `${step} / ${total}` : "—"),
  );
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
