/**
 * Server-Sent Events, for read-only use of channels: `GET /v1/sse?channel=...` read with
 * `fetch` (so it works the same in browsers and Node, and can send `Last-Event-ID` itself).
 * Reconnects with backoff and resumes from the last event id.
 */
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { Channel, Emitter } from "./events.js";
import { State } from "./types.js";

export interface SseOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** Channels to stream (at least one). */
  channels: string[];
  /** Also stream `join` / `leave`. */
  presence?: boolean;
  /** A `fetch` implementation. Default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** Random numbers for jitter. */
  random?: () => number;
}

/** One event of the stream: its name (`message` when unnamed), parsed data and id. */
export interface SseEvent {
  event: string;
  data: unknown;
  id?: string;
}

export interface SseEvents extends Record<string, unknown> {
  /** An event from the stream. */
  event: SseEvent;
  /** The connection state changed. */
  state: State;
}

/** A resumable SSE stream of channel messages. */
export class SseClient extends Emitter<SseEvents> implements AsyncIterable<SseEvent> {
  private abort: AbortController | null = null;
  private lastId: string | null = null;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private _state = State.Disconnected;

  constructor(private readonly opts: SseOptions) {
    super();
    if (opts.channels.length === 0) throw new Error("SseClient needs at least one channel");
  }

  get state(): State {
    return this._state;
  }

  /** The id of the last event received (what a reconnect resumes from). */
  get lastEventId(): string | null {
    return this.lastId;
  }

  /** Starts streaming. */
  start(): void {
    if (this._state !== State.Disconnected) return;
    void this.run();
  }

  /** Stops for good. */
  close(): void {
    this.setState(State.Closed);
    if (this.timer) clearTimeout(this.timer);
    this.abort?.abort();
  }

  private setState(s: State): void {
    if (this._state === State.Closed || this._state === s) return;
    this._state = s;
    this.emit("state", s);
  }

  private async run(): Promise<void> {
    const f = this.opts.fetch ?? globalThis.fetch;
    const q = new URLSearchParams();
    for (const c of this.opts.channels) q.append("channel", c);
    if (this.opts.presence) q.set("presence", "true");
    const url = `${this.opts.baseUrl.replace(/\/$/, "")}/v1/sse?${q}`;
    this.setState(State.Connecting);
    this.abort = new AbortController();
    try {
      const headers: Record<string, string> = { accept: "text/event-stream" };
      if (this.lastId) headers["last-event-id"] = this.lastId;
      const res = await f(url, { headers, signal: this.abort.signal });
      if (!res.ok || !res.body) throw new Error(`SSE request failed with HTTP ${res.status}`);
      this.setState(State.Connected);
      this.attempt = 0;
      await this.read(res.body);
    } catch {
      // reconnect below
    }
    if (this._state === State.Closed) return;
    this.setState(State.Connecting);
    const delay = backoffDelay(this.attempt++, this.opts.backoff, this.opts.random);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this._state !== State.Closed) void this.run();
    }, delay);
  }

  private async read(body: ReadableStream<Uint8Array>): Promise<void> {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let event = "";
    let data: string[] = [];
    let id: string | undefined;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (data.length > 0) this.dispatch(event || "message", data.join("\n"), id);
          event = "";
          data = [];
          id = undefined;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
    }
  }

  private dispatch(event: string, raw: string, id: string | undefined): void {
    if (id !== undefined) this.lastId = id;
    let data: unknown = raw;
    try {
      data = JSON.parse(raw);
    } catch {
      // not JSON: keep the text
    }
    this.emit("event", { event, data, ...(id !== undefined ? { id } : {}) });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<SseEvent> {
    let off: () => void = () => undefined;
    const ch = new Channel<SseEvent>(100_000, () => off());
    off = this.on("event", (e) => ch.push(e));
    return ch;
  }
}
