/**
 * The geostream client: one WebSocket connection that reconnects by itself (exponential
 * backoff with full jitter), resumes every subscription where it stopped, sends requests with
 * `AbortSignal` cancellation, and sends edits through an outbox so none is lost or applied
 * twice.
 */
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { decodeFrame, encodeFrame, type Id, type Incoming, type WireError } from "./codec.js";
import { AbortError, ConnectionError, RpcError } from "./errors.js";
import { Emitter } from "./events.js";
import { EditQueue, MemoryOutboxStore, type OutboxEntry, type OutboxStore } from "./outbox.js";
import { applyDelta } from "./delta.js";
import { ChannelSubscription, LayerSubscription, PresenceSubscription, TileSubscription, type TileMode, type TileSelection } from "./subscriptions.js";
import { WsTransport, type WebSocketFactory } from "./transport_ws.js";
import {
  SUBPROTOCOLS,
  State,
  type ChannelHistoryResult,
  type ClientInfo,
  type EditResult,
  type Encoding,
  type Feature,
  type FeatureInput,
  type FeatureQueryResult,
  type FilterSpec,
  type Geometry,
  type HelloResult,
  type LayerCreateParams,
  type LayerInfo,
  type LockInfo,
  type Position,
  type ProgressParams,
} from "./types.js";

/** The client's version, sent in `hello`. */
export const CLIENT_VERSION = "0.1.0";

/** Close codes after which reconnecting as is cannot help (docs/PROTOCOL.md). */
const FINAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 4003]);

export interface ClientOptions {
  /** The WebSocket URL, e.g. `ws://127.0.0.1:8080/v1/ws`. */
  url: string;
  /** Encoding to ask for. Default `msgpack`. */
  encoding?: Encoding;
  /** WebSocket implementation. Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketFactory;
  /** A JWT sent in `hello`. */
  token?: string;
  /** Shown to others in presence (a name, a colour). At most 1 KiB of JSON. */
  info?: unknown;
  /**
   * A stable id kept across reconnects (and page reloads, if you store it): locks belong to
   * it, so a client that comes back within the server's grace period keeps its locks.
   * Default: a random id per client object.
   */
  clientId?: string;
  /** Where unsent edits wait. Default in memory; in browsers use `IndexedDbOutboxStore`. */
  outbox?: OutboxStore;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /** Random numbers in [0, 1) for jitter (tests make it deterministic). */
  random?: () => number;
  /** Time allowed for the socket to open and `hello` to be answered, in ms. Default 10,000. */
  connectTimeoutMs?: number;
  /** Default timeout of a request, in ms (0: none). Default 30,000. */
  requestTimeoutMs?: number;
  /**
   * Follow the browser's `online` / `offline` events: go quiet while offline and reconnect at
   * once when back. Default true where `window` exists.
   */
  watchNetwork?: boolean;
  /** Software name sent in `hello`. */
  clientName?: string;
}

/** Options of an edit sent through the outbox. */
export interface EditOptions {
  /** The idempotency key (default: a random one). */
  opId?: string;
  /** Kept with the queued edit, also over a page reload ({@link OutboxEntry.meta}). */
  meta?: unknown;
}

/** Options of an edit of an existing feature. */
export interface VersionedEditOptions extends EditOptions {
  /** The version the edit is based on; the server refuses it (`conflict`) if the feature moved on. */
  version?: number;
}

/** Options of one request. */
export interface RequestOptions {
  /** Aborting it sends `$/cancelRequest` and rejects with {@link AbortError}. */
  signal?: AbortSignal;
  /** Overrides the client's `requestTimeoutMs` (0: none). */
  timeoutMs?: number;
  /** Called with each `$/progress` of the request. */
  onProgress?: (p: ProgressParams) => void;
}

/** Events of a {@link GeostreamClient}. */
export interface ClientEvents extends Record<string, unknown> {
  /** The connection state changed. */
  state: { state: State; previous: State };
  /** A connection is up and `hello` answered (every time, reconnects included). */
  connected: HelloResult;
  /** The connection dropped; `willRetry` tells whether the client reconnects. */
  disconnected: { code: number; reason: string; willRetry: boolean };
  /** The next attempt is scheduled. */
  reconnecting: { attempt: number; delayMs: number };
  /** The number of edits waiting in the outbox changed. */
  outbox: { pending: number };
  /** The server acknowledged an edit (also one queued before a page reload). */
  edit: { entry: OutboxEntry; result: EditResult };
  /** The server refused a queued edit for good. */
  editRejected: { entry: OutboxEntry; error: Error };
  /** A frame could not be decoded, or a listener failed. */
  error: Error;
}

type ResponseCallback = (err: Error | null, result?: unknown) => void;

interface InFlight {
  cb: ResponseCallback;
  onProgress?: (p: ProgressParams) => void;
}

interface Queued {
  method: string;
  params: unknown;
  cb: ResponseCallback;
  onProgress?: (p: ProgressParams) => void;
  sent?: (id: Id) => void;
}

/** A geostream connection. Create it, call `connect()`, use it; `close()` ends it. */
export class GeostreamClient extends Emitter<ClientEvents> {
  private readonly opts: ClientOptions;
  private readonly WS: WebSocketFactory;
  private transport: WsTransport | null = null;
  private enc: Encoding;
  private nextId = 1;
  private inFlight = new Map<Id, InFlight>();
  private queue: Queued[] = [];
  private subs = new Set<SubLike>();
  private bySid = new Map<number, SubLike>();
  /** The last cursor shared on each layer, shared again after a reconnect. */
  private cursors = new Map<string, { layer: string; position: [number, number] | null; editing?: string[] }>();
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private lastFrameAt = 0;
  private offline = false;
  private _state = State.Disconnected;
  private readonly edits: EditQueue;
  private unwatch: (() => void) | null = null;
  /** The `hello` result of the current connection. */
  session: HelloResult | null = null;
  /** The id locks are held under (see {@link ClientOptions.clientId}). */
  readonly clientId: string;

  constructor(opts: ClientOptions) {
    super();
    this.opts = opts;
    const ws = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketFactory }).WebSocket;
    if (!ws) throw new Error("no WebSocket implementation: pass options.WebSocket (e.g. the ws package)");
    this.WS = ws;
    this.enc = opts.encoding ?? "msgpack";
    this.clientId = opts.clientId ?? randomClientId();
    this.edits = new EditQueue(
      opts.outbox ?? new MemoryOutboxStore(),
      {
        isConnected: () => this._state === State.Connected,
        sendEdit: (method, params, done) => this.send(method, params, done),
      },
      {
        acked: (entry, result) => {
          this.holdOwnEdit(entry, result);
          this.emit("edit", { entry, result: result as EditResult });
        },
        rejected: (entry, error) => this.emit("editRejected", { entry, error }),
        changed: (pending) => this.emit("outbox", { pending }),
        isTransient: (e) => e instanceof ConnectionError || (e instanceof RpcError && e.transient),
        retryDelay: (attempt) => backoffDelay(attempt, this.opts.backoff, this.opts.random),
      },
    );
  }

  /** Layer subscriptions of an acknowledged edit's layer hold its result at once. */
  private holdOwnEdit(entry: OutboxEntry, result: unknown): void {
    const r = result as { results?: EditResult[] } & Partial<EditResult>;
    const results: EditResult[] = Array.isArray(r?.results) ? r.results : r && typeof r.id === "string" ? [r as EditResult] : [];
    if (!results.length) return;
    for (const s of this.subs) {
      if (!(s instanceof LayerSubscription) || s.layer !== entry.layer) continue;
      for (const e of results) if (!e.replayed) s.ownEdit(e.id, e.version, e.seq, e.feature);
    }
  }

  /** The connection state. */
  get state(): State {
    return this._state;
  }

  /** The encoding of the current (or next) connection. */
  get encoding(): Encoding {
    return this.enc;
  }

  /** Edits waiting for the server, oldest first. */
  pendingEdits(): readonly OutboxEntry[] {
    return this.edits.pending();
  }

  /** Settles once the outbox has loaded what a previous page left in it. */
  get outboxLoaded(): Promise<void> {
    return this.edits.loaded;
  }

  /** Opens the connection (and keeps it open until `close()`). Resolves once connected. */
  connect(): Promise<HelloResult> {
    if (this._state === State.Closed) return Promise.reject(new ConnectionError("the client is closed"));
    const up = new Promise<HelloResult>((resolve, reject) => {
      if (this._state === State.Connected && this.session) return resolve(this.session);
      const offC = this.once("connected", (h) => {
        offS();
        resolve(h);
      });
      const offS = this.on("state", ({ state }) => {
        if (state === State.Closed) {
          offC();
          offS();
          reject(new ConnectionError("the client was closed before it connected"));
        }
      });
    });
    this.watchNetwork();
    if (this._state === State.Disconnected && !this.offline) this.open();
    return up;
  }

  /** Closes the connection for good; pending requests fail, queued edits stay in the store. */
  close(): void {
    this.unwatch?.();
    this.unwatch = null;
    this.clearTimers();
    const t = this.transport;
    this.transport = null;
    t?.close(1000, "client closed");
    this.dropConnection(new ConnectionError("the client was closed"));
    for (const q of this.queue.splice(0)) q.cb(new ConnectionError("the client was closed"));
    for (const s of this.subs) s.end();
    this.subs.clear();
    this.setState(State.Closed);
  }

  /**
   * Drops the current connection as if the network had failed (it reconnects after the
   * usual backoff). For tests and for a "reconnect now" button.
   */
  reconnect(): void {
    if (this._state === State.Closed) return;
    const t = this.transport;
    if (t) t.close(4000, "client reconnect");
    else {
      this.attempt = 0;
      if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
      this.open();
    }
  }

  /** Sends a request and resolves with its result (rejects with {@link RpcError} etc.). */
  request<T = unknown>(method: string, params?: unknown, opts: RequestOptions = {}): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this._state === State.Closed) return reject(new ConnectionError("the client is closed"));
      const signal = opts.signal;
      if (signal?.aborted) return reject(new AbortError());
      let id: Id | null = null;
      let settled = false;
      let timer: ReturnType<typeof setTimeout> | null = null;
      const timeoutMs = opts.timeoutMs ?? this.opts.requestTimeoutMs ?? 30_000;
      const finish = (err: Error | null, result?: unknown): void => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        if (err) reject(err);
        else resolve(result as T);
      };
      const item: Queued = {
        method,
        params,
        cb: finish,
        sent: (sentId) => {
          id = sentId;
        },
        ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      };
      const cancel = (err: Error): void => {
        if (settled) return;
        if (id !== null) {
          this.inFlight.delete(id);
          // Tell the server to stop the work; it answers with -32800, which nobody awaits.
          this.notify("$/cancelRequest", { id });
        } else {
          this.queue = this.queue.filter((q) => q !== item);
        }
        finish(err);
      };
      const onAbort = (): void => cancel(new AbortError());
      signal?.addEventListener("abort", onAbort);
      if (timeoutMs > 0) timer = setTimeout(() => cancel(new AbortError(`${method} timed out after ${timeoutMs} ms`)), timeoutMs);
      if (this._state === State.Connected) this.dispatch(item);
      else this.queue.push(item);
    });
  }

  /** Sends a notification (no answer). Dropped when not connected. */
  notify(method: string, params?: unknown): void {
    this.transport?.send(encodeFrame(this.enc, method, params));
  }

  // ---- channels -------------------------------------------------------------------------

  /** Publishes a message to a channel; resolves with its position. */
  publish(channel: string, data: unknown, opts?: RequestOptions): Promise<Position> {
    return this.request("channel.publish", { channel, data }, opts);
  }

  /** Reads a channel's history. */
  history(channel: string, since?: Position, limit?: number, opts?: RequestOptions): Promise<ChannelHistoryResult> {
    return this.request("channel.history", { channel, since, limit }, opts);
  }

  /** Lists who is subscribed to a channel. */
  async presence(channel: string, opts?: RequestOptions): Promise<ClientInfo[]> {
    return (await this.request<{ clients: ClientInfo[] }>("channel.presence", { channel }, opts)).clients;
  }

  /**
   * Subscribes to a channel. Messages come as `message` events (and from the async
   * iterator); with `presence`, the subscription also keeps `members` up to date. After a
   * reconnect it resumes from the last message seen.
   */
  subscribeChannel(channel: string, opts: { presence?: boolean; since?: Position } = {}): ChannelSubscription {
    const s = new ChannelSubscription(this.subscriptionHost(), channel, opts);
    this.subs.add(s);
    s.start();
    return s;
  }

  // ---- layer presence and cursors --------------------------------------------------------

  /**
   * Joins a layer's presence: the subscription keeps `members` and their `cursors` up to
   * date, and is made again after a reconnect. `close()` leaves.
   */
  subscribePresence(layer: string): PresenceSubscription {
    const s = new PresenceSubscription(this.subscriptionHost(), layer);
    this.subs.add(s);
    s.start();
    return s;
  }

  /**
   * Shares where this client's pointer is on `layer` (null: it left the map) and which
   * features it edits, as a notification: nothing waits for it, and the server drops cursors
   * beyond 20 a second per connection. The last one of each layer is shared again after a
   * reconnect (the server keeps no cursors).
   */
  sendCursor(layer: string, position: [number, number] | null, editing: string[] = []): void {
    const params = { layer, position, ...(editing.length ? { editing } : {}) };
    if (position === null && editing.length === 0) this.cursors.delete(layer);
    else this.cursors.set(layer, params);
    if (this._state === State.Connected) this.notify("presence.cursor", params);
  }

  // ---- layers and features ----------------------------------------------------------------

  /** Creates a layer. */
  createLayer(p: LayerCreateParams, opts?: RequestOptions): Promise<LayerInfo> {
    return this.request("layer.create", p, opts);
  }

  /** Creates a layer unless it exists; resolves with its description either way. */
  async ensureLayer(p: LayerCreateParams, opts?: RequestOptions): Promise<LayerInfo> {
    try {
      return await this.createLayer(p, opts);
    } catch (e) {
      if (e instanceof RpcError && e.codeName === "layer_exists") return this.request("layer.get", { name: p.name }, opts);
      throw e;
    }
  }

  /** Lists layers. */
  async listLayers(opts?: RequestOptions): Promise<LayerInfo[]> {
    return (await this.request<{ layers: LayerInfo[] }>("layer.list", {}, opts)).layers;
  }

  /**
   * Subscribes to a layer's features matching `filter`: a snapshot, then live changes as
   * `enter` / `update` / `exit` / `delete`. `setFilter` moves the view. The subscription keeps
   * the features it holds in `features` and resumes after a reconnect.
   */
  subscribeLayer(layer: string, filter: FilterSpec = {}, opts: { pageSize?: number } = {}): LayerSubscription {
    const s = new LayerSubscription(this.subscriptionHost(), layer, filter, opts);
    this.subs.add(s);
    s.start();
    return s;
  }

  /**
   * Subscribes to a layer's tiles: a viewport (bbox at a zoom) or explicit `"z/x/y"` keys.
   * `delta` (default) delivers every changed tile whole, rebuilt from a small delta;
   * `notify` only says which tile changed (for maps that refetch over HTTP).
   */
  subscribeTiles(layer: string, selection: TileSelection, mode: TileMode = "delta"): TileSubscription {
    const s = new TileSubscription(this.subscriptionHost(), layer, selection, mode, (b, d) =>
      applyDelta(b, d, this.session?.limits.max_frame_bytes ?? 16 * 1024 * 1024),
    );
    this.subs.add(s);
    s.start();
    return s;
  }

  /** Reads one feature. */
  async getFeature(layer: string, id: string, opts?: RequestOptions): Promise<Feature> {
    return (await this.request<{ feature: Feature }>("feature.get", { layer, id }, opts)).feature;
  }

  /** Queries features. */
  queryFeatures(
    layer: string,
    filter: FilterSpec = {},
    page: { limit?: number; offset?: number } = {},
    opts?: RequestOptions,
  ): Promise<FeatureQueryResult> {
    return this.request("feature.query", { layer, ...filter, ...page }, opts);
  }

  /**
   * Creates a feature through the outbox. Give `feature.id` to know the id before the server
   * answers (needed to edit a feature created offline).
   */
  createFeature(layer: string, feature: FeatureInput, opts: EditOptions = {}): Promise<EditResult> {
    const id = feature.id === undefined ? undefined : String(feature.id);
    return this.edit("feature.create", { layer, feature: { type: "Feature", ...feature }, op_id: opts.opId }, layer, id, opts.meta);
  }

  /** Merges properties (a JSON Merge Patch) and/or sets the geometry, through the outbox. */
  patchFeature(
    layer: string,
    id: string,
    patch: { properties?: Record<string, unknown>; geometry?: Geometry | null },
    opts: VersionedEditOptions = {},
  ): Promise<EditResult> {
    return this.edit("feature.patch", { layer, id, ...patch, version: opts.version, op_id: opts.opId }, layer, id, opts.meta);
  }

  /** Replaces a feature, through the outbox. */
  replaceFeature(
    layer: string,
    id: string,
    feature: FeatureInput,
    opts: VersionedEditOptions = {},
  ): Promise<EditResult> {
    return this.edit(
      "feature.replace",
      { layer, id, feature: { type: "Feature", ...feature, id }, version: opts.version, op_id: opts.opId },
      layer,
      id,
      opts.meta,
    );
  }

  /** Deletes a feature, through the outbox. */
  deleteFeature(layer: string, id: string, opts: VersionedEditOptions = {}): Promise<EditResult> {
    return this.edit("feature.delete", { layer, id, version: opts.version, op_id: opts.opId }, layer, id, opts.meta);
  }

  /**
   * Several edits of one layer applied together (all or none, one durable write), through the
   * outbox: `ops` are `{op: "create" | "replace" | "patch" | "delete", ...}` as in
   * `feature.batch`. For imports and multi-feature undo.
   */
  batchEdit(layer: string, ops: Record<string, unknown>[], opts: EditOptions = {}): Promise<{ results: EditResult[]; seq: number; replayed?: boolean }> {
    return this.edit("feature.batch", { layer, ops, op_id: opts.opId }, layer, undefined, opts.meta) as never;
  }

  /** Locks features for editing (all or none); others see `lock` events. */
  async lock(layer: string, ids: string[], ttlMs?: number, opts?: RequestOptions): Promise<LockInfo[]> {
    return (await this.request<{ locks: LockInfo[] }>("feature.lock", { layer, ids, ttl_ms: ttlMs }, opts)).locks;
  }

  /** Releases locks. */
  async unlock(layer: string, ids: string[], opts?: RequestOptions): Promise<LockInfo[]> {
    return (await this.request<{ released: LockInfo[] }>("feature.unlock", { layer, ids }, opts)).released;
  }

  private edit(method: string, params: Record<string, unknown>, layer: string, featureId?: string, meta?: unknown): Promise<EditResult> {
    for (const k of Object.keys(params)) if (params[k] === undefined) delete params[k];
    return this.edits.add(method, params, layer, featureId, meta) as Promise<EditResult>;
  }

  // ---- connection -------------------------------------------------------------------------

  private setState(s: State): void {
    if (s === this._state) return;
    const previous = this._state;
    this._state = s;
    this.emit("state", { state: s, previous });
  }

  private watchNetwork(): void {
    if (this.unwatch) return;
    const w = (globalThis as { window?: { addEventListener: Function; removeEventListener: Function } }).window;
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    if (!(this.opts.watchNetwork ?? w !== undefined) || !w) return;
    const goOffline = (): void => {
      this.offline = true;
      if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
      this.transport?.close(4000, "offline");
    };
    const goOnline = (): void => {
      this.offline = false;
      if (this._state === State.Disconnected || this._state === State.Connecting) {
        this.attempt = 0;
        if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
        if (!this.transport) this.open();
      }
    };
    w.addEventListener("offline", goOffline);
    w.addEventListener("online", goOnline);
    this.unwatch = () => {
      w.removeEventListener("offline", goOffline);
      w.removeEventListener("online", goOnline);
    };
    if (nav?.onLine === false) this.offline = true;
  }

  private open(): void {
    this.setState(State.Connecting);
    this.lastFrameAt = Date.now();
    let handshook = false;
    const t = new WsTransport(this.WS, this.opts.url, [SUBPROTOCOLS[this.enc]], {
      open: (protocol) => {
        const picked = (Object.keys(SUBPROTOCOLS) as Encoding[]).find((e) => SUBPROTOCOLS[e] === protocol);
        this.enc = picked ?? "json";
        this.hello(t, () => {
          handshook = true;
        });
      },
      message: (data) => this.onFrame(data),
      close: (code, reason) => this.onClose(t, code, reason, handshook),
    });
    this.transport = t;
    this.connectTimer = setTimeout(() => {
      if (!handshook) t.close(4000, "connect timeout");
    }, this.opts.connectTimeoutMs ?? 10_000);
  }

  private hello(t: WsTransport, done: () => void): void {
    const params = {
      protocol: 1,
      client: { name: this.opts.clientName ?? "geostream-js", version: CLIENT_VERSION },
      client_id: this.clientId,
      ...(this.opts.token !== undefined ? { token: this.opts.token } : {}),
      ...(this.opts.info !== undefined ? { info: this.opts.info } : {}),
    };
    this.send("hello", params, (err, result) => {
      if (t !== this.transport) return;
      if (err) {
        const final = err instanceof RpcError && (err.codeName === "unauthorized" || err.codeName === "forbidden");
        t.close(final ? 4003 : 4000, err.message);
        return;
      }
      if (this.connectTimer) clearTimeout(this.connectTimer);
      this.connectTimer = null;
      done();
      this.session = result as HelloResult;
      this.attempt = 0;
      this.setState(State.Connected);
      this.startHeartbeat();
      for (const s of this.subs) s.resubscribe();
      for (const c of this.cursors.values()) this.notify("presence.cursor", c);
      this.edits.kick();
      for (const q of this.queue.splice(0)) this.dispatch(q);
      this.emit("connected", this.session);
    });
  }

  private startHeartbeat(): void {
    const interval = this.session?.heartbeat.ping_interval_ms ?? 25_000;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => {
      if (this._state !== State.Connected) return;
      if (Date.now() - this.lastFrameAt < interval) return;
      // Quiet for a whole interval: make sure the server is still there.
      this.request("ping", {}, { timeoutMs: Math.min(interval, 10_000) }).catch(() => {
        this.transport?.close(4000, "no answer to ping");
      });
    }, interval);
  }

  private onClose(t: WsTransport, code: number, reason: string, handshook: boolean): void {
    if (t !== this.transport) return;
    this.transport = null;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    this.dropConnection(new ConnectionError(`the connection closed (${code}${reason ? ` ${reason}` : ""})`));
    if (this._state === State.Closed) return;
    const final = FINAL_CLOSE_CODES.has(code);
    this.emit("disconnected", { code, reason, willRetry: !final });
    if (final) {
      this.close();
      return;
    }
    this.setState(this.offline ? State.Disconnected : State.Connecting);
    if (this.offline) return;
    // `attempt` counts failures since the last successful connection.
    if (handshook) this.attempt = 0;
    const delayMs = backoffDelay(this.attempt, this.opts.backoff, this.opts.random);
    this.attempt++;
    this.emit("reconnecting", { attempt: this.attempt, delayMs });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this._state !== State.Closed && !this.offline && !this.transport) this.open();
    }, delayMs);
  }

  /** Fails everything in flight on the dropped connection and forgets its subscription ids. */
  private dropConnection(err: Error): void {
    this.session = null;
    const inFlight = [...this.inFlight.values()];
    this.inFlight.clear();
    this.bySid.clear();
    for (const s of this.subs) s.connectionLost();
    this.edits.disconnected();
    for (const f of inFlight) f.cb(err);
  }

  private clearTimers(): void {
    for (const t of [this.reconnectTimer, this.connectTimer]) if (t) clearTimeout(t);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.reconnectTimer = this.connectTimer = this.heartbeatTimer = null;
  }

  private dispatch(q: Queued): void {
    const id = this.send(q.method, q.params, q.cb, q.onProgress);
    if (id !== null) q.sent?.(id);
  }

  /** Sends a request on the current socket; `cb` gets the answer, or a ConnectionError. */
  private send(method: string, params: unknown, cb: ResponseCallback, onProgress?: (p: ProgressParams) => void): Id | null {
    const t = this.transport;
    const id = this.nextId++;
    if (!t || !t.send(encodeFrame(this.enc, method, params, id))) {
      cb(new ConnectionError("not connected"));
      return null;
    }
    this.inFlight.set(id, { cb, ...(onProgress ? { onProgress } : {}) });
    return id;
  }

  private onFrame(data: string | ArrayBuffer | ArrayBufferView): void {
    this.lastFrameAt = Date.now();
    let frame: Incoming;
    try {
      frame = decodeFrame(this.enc, data, this.session?.limits.max_frame_bytes ?? undefined);
    } catch (e) {
      this.emit("error", e instanceof Error ? e : new Error(String(e)));
      return;
    }
    if (frame.kind === "response") {
      if (frame.id === null) {
        if (frame.error) this.emit("error", toError(frame.error));
        return;
      }
      const f = this.inFlight.get(frame.id);
      if (!f) return;
      this.inFlight.delete(frame.id);
      if (frame.error) f.cb(toError(frame.error));
      else f.cb(null, frame.result);
      return;
    }
    const params = (frame.params ?? {}) as Record<string, unknown>;
    if (frame.method === "$/progress") {
      this.inFlight.get(params.id as Id)?.onProgress?.(params as unknown as ProgressParams);
      return;
    }
    const sid = params.sub;
    if (typeof sid === "number") this.bySid.get(sid)?.handlePush(frame.method, params);
  }

  private subscriptionHost(): SubscriptionHost {
    return {
      send: (method, params, cb) => {
        if (this._state !== State.Connected) return false;
        return this.send(method, params, cb) !== null;
      },
      request: (method, params) => this.request(method, params),
      bind: (sid, s) => {
        this.bySid.set(sid, s as SubLike);
      },
      unbind: (sid) => {
        this.bySid.delete(sid);
      },
      forget: (s) => {
        this.subs.delete(s as SubLike);
      },
    };
  }
}

/** What the client calls on a subscription. */
interface SubLike {
  resubscribe(): void;
  connectionLost(): void;
  end(): void;
  handlePush(method: string, params: Record<string, unknown>): void;
}

/** What a subscription needs from its client. */
export interface SubscriptionHost {
  /** Sends a request now if connected (false otherwise); `cb` runs before any later frame. */
  send(method: string, params: unknown, cb: ResponseCallback): boolean;
  /** A normal request (queued while disconnected). */
  request<T>(method: string, params: unknown): Promise<T>;
  /** Routes pushes for `sid` to `s`. */
  bind(sid: number, s: object): void;
  /** Stops routing pushes for `sid`. */
  unbind(sid: number): void;
  /** The subscription ended for good. */
  forget(s: object): void;
}

function toError(e: WireError): RpcError {
  return new RpcError(e.code, e.message, e.data);
}

function randomClientId(): string {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}
