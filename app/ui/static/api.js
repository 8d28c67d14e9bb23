// The REST API, with the user's key. The key lives in sessionStorage only (this tab, until it closes):
// never in a URL, a cookie, localStorage or a log line. It goes out as the Authorization header the API
// reads (`Authorization: Bearer bpt_...`).

const KEY_ITEM = "bertpt.apiKey";

export const session = {
  get key() {
    return sessionStorage.getItem(KEY_ITEM);
  },
  signIn(key) {
    sessionStorage.setItem(KEY_ITEM, key);
  },
  signOut() {
    sessionStorage.removeItem(KEY_ITEM);
  },
  // Set by app.js: what to do when the API refuses the key (401).
  onUnauthorized: () => {},
};

/** The API's one error body, {"error": {type, message, param}}, with the HTTP status. */
export class ApiError extends Error {
  constructor(status, type, message, param = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.param = param;
  }
}

async function errorOf(response) {
  let detail = null;
  try {
    detail = (await response.json())?.error ?? null;
  } catch {
    // not the API's JSON (a proxy's page): the status says it
  }
  return new ApiError(
    response.status,
    detail?.type ?? "http_error",
    detail?.message ?? `${response.status} ${response.statusText}`.trim(),
    detail?.param ?? null,
  );
}

/**
 * fetch() with the key; resolves with the Response of a 2xx, throws ApiError otherwise (status 0: the API
 * could not be reached). `json`: a body sent as JSON. An abort (options.signal) rejects with its AbortError.
 */
export async function request(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const sent = new Headers(headers);
  if (session.key) sent.set("Authorization", `Bearer ${session.key}`);
  if (json !== undefined) {
    sent.set("Content-Type", "application/json");
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body, signal, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "network_error", `the API could not be reached (${error.message})`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (error.status === 401) session.onUnauthorized(error);
    throw error;
  }
  return response;
}

/** The JSON body of a request (null for 204). */
export async function getJson(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

/** Every item of a paginated list ({data, next_cursor}), up to `max` items. */
export async function listAll(path, { limit = 100, max = 1000, signal } = {}) {
  const items = [];
  let after = "";
  do {
    const separator = path.includes("?") ? "&" : "?";
    const page = await getJson(`${path}${separator}limit=${limit}&after=${encodeURIComponent(after)}`, { signal });
    items.push(...page.data);
    after = page.next_cursor;
  } while (after && items.length < max);
  return items;
}

/** The file name of a Content-Disposition header (filename*=utf-8''... or filename="..."). */
export function filenameOf(disposition) {
  if (!disposition) return null;
  const encoded = /filename\*=utf-8''([^;]+)/i.exec(disposition);
  if (encoded) return decodeURIComponent(encoded[1]);
  const plain = /filename="([^"]+)"/i.exec(disposition);
  return plain ? plain[1] : null;
}

/**
 * Download `path` with the key (a link cannot send the header): read it, reporting progress
 * (onProgress(received, total|null)), then hand the bytes to the browser as a file.
 */
export async function download(path, { onProgress, signal } = {}) {
  const response = await request(path, { signal });
  const total = Number(response.headers.get("Content-Length")) || null;
  const filename = filenameOf(response.headers.get("Content-Disposition")) ?? "download.tar";
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress?.(received, total);
  }
  const blob = new Blob(chunks, { type: response.headers.get("Content-Type") ?? "application/octet-stream" });
  const url = URL.createObjectURL(blob);
  const link = Object.assign(document.createElement("a"), { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return { filename, bytes: received };
}

/**
 * Upload a file as multipart (field `file`, and `name` when given) with upload progress
 * (XMLHttpRequest: fetch reports none); resolves with the JSON body, rejects with ApiError.
 */
export function upload(path, file, { name, onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    if (name) form.append("name", name);
    form.append("file", file);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (session.key) xhr.setRequestHeader("Authorization", `Bearer ${session.key}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (event) => onProgress?.(event.loaded, event.lengthComputable ? event.total : null);
    xhr.onerror = () => reject(new ApiError(0, "network_error", "the upload could not reach the API"));
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(xhr.response);
        return;
      }
      const detail = xhr.response?.error;
      const error = new ApiError(
        xhr.status,
        detail?.type ?? "http_error",
        detail?.message ?? `${xhr.status} ${xhr.statusText}`,
        detail?.param ?? null,
      );
      if (error.status === 401) session.onUnauthorized(error);
      reject(error);
    };
    xhr.send(form);
  });
}
