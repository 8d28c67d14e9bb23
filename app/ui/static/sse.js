// Server-Sent Events over fetch(): EventSource cannot send the Authorization header. A parser of the
// text/event-stream format (https://html.spec.whatwg.org/multipage/server-sent-events.html) and a follower
// that reconnects with Last-Event-ID, as EventSource would.

import { ApiError, request } from "./api.js";
import { sleep } from "./dom.js";

/** Turns the text of a stream, in chunks cut anywhere, into events {id, event, data}. */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.lastEventId = "";
    this.reset();
  }

  reset() {
    this.data = [];
    this.type = "";
  }

  /** The events completed by `text`. */
  push(text) {
    this.buffer += text;
    const events = [];
    for (;;) {
      const end = this.buffer.search(/[\r\n]/);
      if (end < 0) break;
      // A "\r" at the very end may be the first half of a "\r\n" still to come: wait for it.
      if (this.buffer[end] === "\r" && end === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, end);
      const width = this.buffer[end] === "\r" && this.buffer[end + 1] === "\n" ? 2 : 1;
      this.buffer = this.buffer.slice(end + width);
      const event = this.line(line);
      if (event) events.push(event);
    }
    return events;
  }

  line(line) {
    if (line === "") {
      const event = this.data.length
        ? { id: this.lastEventId, event: this.type || "message", data: this.data.join("\n") }
        : null;
      this.reset();
      return event;
    }
    if (line.startsWith(":")) return null; // a comment: the server's keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    return null;
  }
}

const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30_000;

/**
 * Follow the stream at `path` until it ends for good or `signal` aborts. Each event goes to onEvent(event).
 * `lastEventId`: resume after this id (null: from the start). After a connection that fails or ends, it
 * reconnects with the last id seen (backing off from 1 s to 30 s), unless the last event `ended(event)`
 * spoke of said that nothing follows it (true; false: it goes on; undefined: says nothing), or
 * `reconnect()` resolves false. A refusal (4xx other than 429) is thrown. onState("open" | "retrying" | "ended", error?) tells
 * the connection's state.
 */
export async function followStream(
  path,
  { lastEventId = null, onEvent, ended = () => undefined, reconnect = async () => true, onState = () => {}, signal },
) {
  let last = lastEventId;
  let wait = FIRST_RETRY_MS;
  while (!signal.aborted) {
    let finished = false;
    try {
      const headers = { Accept: "text/event-stream" };
      if (last) headers["Last-Event-ID"] = last;
      const response = await request(path, { headers, signal });
      onState("open");
      wait = FIRST_RETRY_MS;
      const parser = new SseParser();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          for (const event of parser.push(value)) {
            if (event.id) last = event.id;
            onEvent(event);
            const ends = ended(event); // true: nothing follows; false: it goes on (a resumed run)
            if (ends !== undefined) finished = ends;
          }
        }
      } finally {
        reader.cancel().catch(() => {});
      }
      if (finished || !(await reconnect())) {
        onState("ended");
        return;
      }
    } catch (error) {
      if (signal.aborted || error.name === "AbortError") return;
      if (error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429) {
        throw error;
      }
      onState("retrying", error);
    }
    await sleep(wait, signal);
    wait = Math.min(2 * wait, LAST_RETRY_MS);
  }
}
