/**
 * Subscriptions: channel streams (with presence) and layer feature streams. Each is an
 * event emitter and an async iterable, outlives reconnects (it subscribes again, resuming
 * from the last position it saw), and ends with `close()`.
 */
import type { SubscriptionHost } from "./client.js";
import { RpcError } from "./errors.js";
import { Channel, Emitter } from "./events.js";
import type {
  ChannelSubscribeResult,
  ClientInfo,
  Feature,
  FeatureKind,
  FeaturePush,
  FilterSpec,
  Geometry,
  LayerSubscribeResult,
  LockInfo,
  LockPush,
  Position,
  Push,
  ResyncPush,
  SnapshotPush,
  SubscriptionUpdateResult,
} from "./types.js";

type Cb = (err: Error | null, result?: unknown) => void;

/** Events every subscription has, besides its own. */
export interface BaseEvents<E> extends Record<string, unknown> {
  /** One item of the stream (what the async iterator yields). */
  event: E;
  /** The server accepted the subscription (again, after each reconnect). */
  subscribed: unknown;
  /** The subscription failed for good, or the server ended it. */
  error: Error;
  /** The subscription ended. */
  end: undefined;
}

/** The common machinery: (re)subscribing, push routing, iteration, closing. */
export abstract class Subscription<E, X extends Record<string, unknown> = Record<string, never>> extends Emitter<
  BaseEvents<E> & X
> {
  /** The server's id for this subscription on the current connection. */
  sid: number | null = null;
  private ended = false;
  private firstResolve!: () => void;
  private firstReject!: (e: Error) => void;
  private subscribedOnce = false;
  /** Settles when the server first accepted the subscription (or refused it). */
  readonly ready: Promise<void>;

  protected constructor(protected readonly host: SubscriptionHost) {
    super();
    this.ready = new Promise<void>((resolve, reject) => {
      this.firstResolve = resolve;
      this.firstReject = reject;
    });
    this.ready.catch(() => undefined);
  }

  /** Whether `close()` was called or the subscription failed. */
  get closed(): boolean {
    return this.ended;
  }

  /** The method and params that (re)create the subscription on a new connection. */
  protected abstract subscribeRequest(): [string, Record<string, unknown>];
  /** The server accepted a subscribe request. */
  protected abstract onSubscribed(result: unknown): void;
  /** A push for this subscription arrived. */
  abstract handlePush(method: string, params: Record<string, unknown>): void;

  /** Subscribes now if connected (otherwise on connect). */
  start(): void {
    this.resubscribe();
  }

  /** Sends the subscribe request on the current connection. */
  resubscribe(): void {
    if (this.ended) return;
    const [method, params] = this.subscribeRequest();
    const sent = this.host.send(method, params, (err, result) => {
      if (this.ended) {
        const sid = (result as { sub?: number } | undefined)?.sub;
        if (!err && typeof sid === "number") void this.host.request("unsubscribe", { sub: sid }).catch(() => undefined);
        return;
      }
      if (err) {
        // A dropped connection resubscribes on the next one; a refusal ends the subscription.
        if (err instanceof RpcError) this.fail(err);
        return;
      }
      const sid = (result as { sub: number }).sub;
      this.sid = sid;
      this.host.bind(sid, this);
      this.onSubscribed(result);
      this.emit("subscribed", result as never);
      if (!this.subscribedOnce) {
        this.subscribedOnce = true;
        this.firstResolve();
      }
    });
    if (!sent) this.notSent();
  }

  /** The subscribe request could not be sent (not connected); it goes out on connect. */
  protected notSent(): void {}

  /** The connection dropped: the id is void until the next subscribe. */
  connectionLost(): void {
    this.sid = null;
  }

  /** Ends the subscription (unsubscribing on the server). */
  close(): void {
    if (this.ended) return;
    const sid = this.sid;
    this.end();
    if (sid !== null) void this.host.request("unsubscribe", { sub: sid }).catch(() => undefined);
  }

  /** Ends locally without telling the server. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.sid !== null) this.host.unbind(this.sid);
    this.sid = null;
    this.host.forget(this);
    this.firstReject(new Error("the subscription ended"));
    this.emit("end", undefined as never);
  }

  protected fail(e: Error): void {
    if (this.ended) return;
    this.emit("error", e as never);
    this.firstReject(e);
    this.end();
  }

  protected push(e: E): void {
    this.emit("event", e as never);
  }

  /** Iterates over the events from now on, until the subscription ends. */
  [Symbol.asyncIterator](): AsyncIterableIterator<E> {
    let offEvent: () => void = () => undefined;
    let offEnd: () => void = () => undefined;
    let offErr: () => void = () => undefined;
    const ch = new Channel<E>(100_000, () => {
      offEvent();
      offEnd();
      offErr();
    });
    offEvent = this.on("event", (e) => ch.push(e as E));
    offErr = this.on("error", (e) => ch.fail(e));
    offEnd = this.on("end", () => ch.end());
    if (this.ended) ch.end();
    return ch;
  }
}

// ---- channels ---------------------------------------------------------------------------

/** An item of a channel subscription. */
export type ChannelEvent =
  | { type: "message"; offset: number; data: unknown }
  /** Messages from `from` on were dropped for this slow subscriber; read them with `history`. */
  | { type: "gap"; from: number; epoch: string }
  | { type: "join"; client: ClientInfo }
  | { type: "leave"; client: ClientInfo }
  /** After a reconnect, the missed messages could not be replayed (history moved on). */
  | { type: "resync"; position: Position };

/** Extra events of a channel subscription. */
export interface ChannelEvents extends Record<string, unknown> {
  /** With `presence`: who is here now (after every join, leave and resubscribe). */
  presence: ClientInfo[];
}

/** A channel subscription. */
export class ChannelSubscription extends Subscription<ChannelEvent, ChannelEvents> {
  /** The position of the last message seen (resume point). */
  position: Position | null = null;
  /** With `presence`: the sessions here now, by session id. */
  readonly members = new Map<string, ClientInfo>();
  private presenceEpoch = 0;

  constructor(
    host: SubscriptionHost,
    readonly channel: string,
    private readonly opts: { presence?: boolean; since?: Position },
  ) {
    super(host);
    if (opts.since) this.position = { ...opts.since };
  }

  protected subscribeRequest(): [string, Record<string, unknown>] {
    const p: Record<string, unknown> = { channel: this.channel };
    if (this.position) p.since = this.position;
    if (this.opts.presence) p.presence = true;
    return ["channel.subscribe", p];
  }

  protected onSubscribed(result: unknown): void {
    const r = result as ChannelSubscribeResult;
    const resumed = this.position !== null;
    if (resumed && r.recovered === false) this.push({ type: "resync", position: r.position });
    if (!resumed || r.recovered === false) this.position = { ...r.position };
    if (this.opts.presence) this.refreshPresence();
  }

  /** Reads the full member list; pushes received before it arrives are superseded by it. */
  private refreshPresence(): void {
    const epoch = ++this.presenceEpoch;
    this.host
      .request<{ clients: ClientInfo[] }>("channel.presence", { channel: this.channel })
      .then((r) => {
        if (epoch !== this.presenceEpoch || this.closed) return;
        this.members.clear();
        for (const c of r.clients) this.members.set(c.session, c);
        this.emit("presence", [...this.members.values()]);
      })
      .catch(() => undefined);
  }

  handlePush(method: string, p: Record<string, unknown>): void {
    switch (method) {
      case "message": {
        const offset = p.offset as number;
        if (this.position) this.position = { offset, epoch: this.position.epoch };
        this.push({ type: "message", offset, data: p.data });
        break;
      }
      case "gap":
        this.push({ type: "gap", from: p.from as number, epoch: p.epoch as string });
        break;
      case "join":
      case "leave": {
        const client = p.client as ClientInfo;
        if (method === "join") this.members.set(client.session, client);
        else this.members.delete(client.session);
        this.push({ type: method, client });
        this.emit("presence", [...this.members.values()]);
        break;
      }
      case "unsubscribed":
        this.fail(new Error(`the server ended the subscription: ${String(p.reason)}`));
        break;
    }
  }

  /** Publishes to this subscription's channel. */
  publish(data: unknown): Promise<Position> {
    return this.host.request("channel.publish", { channel: this.channel, data });
  }
}

// ---- layer presence and cursors ----------------------------------------------------------

/** Where someone's pointer is on a layer, and what they edit. */
export interface Cursor {
  client: ClientInfo;
  /** `[lon, lat]`, or null when the pointer left the map. */
  position: [number, number] | null;
  /** Ids of the features being edited. */
  editing: string[];
  /** When it arrived (`Date.now()`). */
  at: number;
}

/** An item of a layer presence subscription. */
export type PresenceEvent =
  /** Everyone on the layer now, this client included (on subscribe and after each reconnect). */
  | { type: "members"; members: ClientInfo[] }
  | { type: "join"; client: ClientInfo }
  /** Someone left (or disconnected); their cursor goes with them. */
  | { type: "leave"; client: ClientInfo }
  | { type: "cursor"; cursor: Cursor };

/** Extra events of a layer presence subscription. */
export interface PresenceEvents extends Record<string, unknown> {
  /** Who is here now (after every members list, join and leave). */
  presence: ClientInfo[];
}

/**
 * A layer's presence (`presence.subscribe`): who is on the layer (`members`, by session) and
 * their latest cursors (`cursors`, by session). Sessions change when a client reconnects: it
 * leaves with the old one and joins with the new one. After this client reconnects, the
 * subscription is made again and the member list replaces what was held.
 */
export class PresenceSubscription extends Subscription<PresenceEvent, PresenceEvents> {
  /** The sessions on the layer now, by session id. */
  readonly members = new Map<string, ClientInfo>();
  /** The latest cursor of each member that shared one, by session id. */
  readonly cursors = new Map<string, Cursor>();

  constructor(
    host: SubscriptionHost,
    readonly layer: string,
  ) {
    super(host);
  }

  protected subscribeRequest(): [string, Record<string, unknown>] {
    return ["presence.subscribe", { layer: this.layer }];
  }

  protected onSubscribed(result: unknown): void {
    const r = result as { members: ClientInfo[] };
    this.members.clear();
    for (const m of r.members) this.members.set(m.session, m);
    for (const sid of [...this.cursors.keys()]) if (!this.members.has(sid)) this.cursors.delete(sid);
    this.push({ type: "members", members: r.members });
    this.emit("presence", [...this.members.values()]);
  }

  handlePush(method: string, p: Record<string, unknown>): void {
    switch (method) {
      case "join":
      case "leave": {
        const client = p.client as ClientInfo;
        if (method === "join") this.members.set(client.session, client);
        else {
          this.members.delete(client.session);
          this.cursors.delete(client.session);
        }
        this.push({ type: method, client });
        this.emit("presence", [...this.members.values()]);
        break;
      }
      case "cursor": {
        const cursor: Cursor = {
          client: p.client as ClientInfo,
          position: (p.position as [number, number] | null | undefined) ?? null,
          editing: (p.editing as string[] | undefined) ?? [],
          at: Date.now(),
        };
        this.cursors.set(cursor.client.session, cursor);
        this.push({ type: "cursor", cursor });
        break;
      }
      case "unsubscribed":
        this.fail(new Error(`the server ended the subscription: ${String(p.reason)}`));
        break;
    }
  }
}

// ---- layers -----------------------------------------------------------------------------

/** A change of what a layer subscription holds. */
export interface FeatureChange {
  type: "change";
  /** `enter`: now held; `update`: changed; `exit`: left the view; `delete`: deleted. */
  kind: FeatureKind;
  id: string;
  /** The layer's sequence number of the change (the snapshot's for snapshot features). */
  seq: number;
  /** The feature after the change; for `exit` and `delete`, the last state held. */
  feature: Feature | undefined;
  /**
   * For a partial `update`: what changed. `properties` is a JSON Merge Patch (`null` removes
   * a property); `geometry` is present when the geometry changed.
   */
  patch?: { properties?: Record<string, unknown>; geometry?: Geometry | null };
}

/** An item of a layer subscription. */
export type LayerEvent =
  | FeatureChange
  /** The held set is complete and current (after a snapshot, or a replay on resume). */
  | { type: "synced"; seq: number }
  /** The server could not continue the stream; a fresh snapshot follows. */
  | { type: "resync"; seq: number; reason: string }
  /** A feature in the layer was locked or unlocked. */
  | { type: "lock"; lock: LockInfo; locked: boolean };

/**
 * A layer subscription. Keeps the features it holds (`features`) and the locks it has seen
 * (`locks`), so a map can be drawn from it at any time; emits each change as it applies it.
 */
export class LayerSubscription extends Subscription<LayerEvent> {
  /** The features matching the filter, by id. */
  readonly features = new Map<string, Feature>();
  /** Live locks announced since subscribing, by feature id. */
  readonly locks = new Map<string, LockInfo>();
  /** The last sequence number applied (resume point). */
  seq = 0;
  private filter: FilterSpec;
  /** Set while a snapshot streams in: the ids it has delivered so far. */
  private incoming: Set<string> | null = null;
  /** Features this client deleted whose `delete` push has not come yet, with its `seq`. */
  private readonly ownDeletes = new Map<string, number>();
  /** Whether `seq` is a complete state to resume from. */
  private resumable = false;
  /** The filter the server has (JSON), to notice one set while not live. */
  private sentFilter = "";
  /** A subscribe request is on its way. */
  private subscribing = false;

  constructor(
    host: SubscriptionHost,
    readonly layer: string,
    filter: FilterSpec,
    private readonly opts: { pageSize?: number },
  ) {
    super(host);
    this.filter = { ...filter };
  }

  /** The current filter. */
  getFilter(): FilterSpec {
    return { ...this.filter };
  }

  protected subscribeRequest(): [string, Record<string, unknown>] {
    const p: Record<string, unknown> = { layer: this.layer, ...this.filter };
    if (this.opts.pageSize) p.page_size = this.opts.pageSize;
    if (this.resumable) p.since = this.seq;
    this.sentFilter = JSON.stringify(this.filter);
    this.subscribing = true;
    return ["layer.subscribe", p];
  }

  protected override notSent(): void {
    this.subscribing = false;
  }

  protected onSubscribed(result: unknown): void {
    const r = result as LayerSubscribeResult;
    this.subscribing = false;
    if (r.recovered === true) {
      // The missed changes follow as pushes; what we hold stays valid.
      this.seq = Math.max(this.seq, r.seq);
      this.push({ type: "synced", seq: this.seq });
      this.syncFilter();
    } else {
      // A snapshot follows (a fresh subscription, or history has moved on).
      this.incoming = new Set();
      this.ownDeletes.clear();
      this.resumable = false;
    }
  }

  override connectionLost(): void {
    super.connectionLost();
    this.subscribing = false;
    if (this.incoming) {
      // A snapshot was cut short: the next subscription starts over with a fresh one.
      this.incoming = null;
      this.resumable = false;
    }
  }

  /**
   * Replaces the filter (moves the viewport). Live, the server sends `enter` / `exit` for the
   * difference; otherwise the filter is sent once the subscription is live again (and a
   * subscription made while disconnected starts from a fresh snapshot, so features outside the
   * new view leave). Resolves with the server's counts, or null when it could not ask now.
   */
  setFilter(filter: FilterSpec): Promise<SubscriptionUpdateResult | null> {
    this.filter = { ...filter };
    if (this.sid !== null && !this.incoming) return this.sendFilter();
    if (this.sid === null && !this.subscribing) this.resumable = false;
    return Promise.resolve(null);
  }

  private sendFilter(): Promise<SubscriptionUpdateResult | null> {
    const sid = this.sid;
    const filter = { ...this.filter };
    this.sentFilter = JSON.stringify(filter);
    return new Promise((resolve, reject) => {
      const sent = this.host.send("subscription.update", { sub: sid, ...filter }, (err, result) => {
        if (err) {
          if (err instanceof RpcError) reject(err);
          else resolve(null); // the connection dropped; the resubscription carries the filter
          return;
        }
        const r = result as SubscriptionUpdateResult;
        this.seq = Math.max(this.seq, r.seq);
        resolve(r);
      });
      if (!sent) resolve(null);
    });
  }

  /** Once live: sends a filter set while the subscription was not. */
  private syncFilter(): void {
    if (this.sid !== null && !this.incoming && JSON.stringify(this.filter) !== this.sentFilter) {
      void this.sendFilter().catch((e: Error) => this.emit("error", e));
    }
  }

  handlePush(method: string, p: Record<string, unknown>): void {
    switch (method) {
      case "snapshot":
        this.onSnapshot(p as unknown as SnapshotPush);
        break;
      case "feature":
        this.onFeature(p as unknown as FeaturePush);
        break;
      case "resync": {
        const r = p as unknown as ResyncPush;
        this.incoming = new Set();
        this.ownDeletes.clear();
        this.resumable = false;
        this.push({ type: "resync", seq: r.seq, reason: r.reason });
        break;
      }
      case "lock": {
        const { sub: _sub, locked, ...lock } = p as unknown as Push<LockPush>;
        if (locked) this.locks.set(lock.id, lock);
        else if (this.locks.get(lock.id)?.client === lock.client) this.locks.delete(lock.id);
        this.push({ type: "lock", lock, locked });
        break;
      }
      case "unsubscribed":
        this.fail(new Error(`the server ended the subscription: ${String(p.reason)}`));
        break;
    }
  }

  private onSnapshot(s: SnapshotPush): void {
    if (!this.incoming) this.incoming = new Set();
    for (const f of s.features) {
      this.incoming.add(f.id);
      const had = this.features.get(f.id);
      this.features.set(f.id, f);
      if (!had) this.change("enter", f.id, s.seq, f);
      else if (had.version !== f.version || had.updated !== f.updated) this.change("update", f.id, s.seq, f);
    }
    if (!s.last) return;
    // Whatever the new snapshot did not contain has left the view.
    for (const [id, f] of [...this.features]) {
      if (!this.incoming.has(id)) {
        this.features.delete(id);
        this.change("exit", id, s.seq, f);
      }
    }
    this.incoming = null;
    this.seq = s.seq;
    this.resumable = true;
    this.push({ type: "synced", seq: this.seq });
    this.syncFilter();
  }

  /**
   * This client's own edit was acknowledged (`version` is the feature's version after it;
   * `feature` is absent after a delete). The protocol does not order an edit's answer and
   * its push to the same connection; when the answer comes first, without this a feature
   * held here would still be the old one for a moment after the edit's promise settled: an
   * undo or a next edit made then would start from a stale version. Only features already held are touched (whether a
   * new or moved one matches the filter is the push's to say), and `seq` is not advanced:
   * the push still comes and stays the resume point.
   */
  ownEdit(id: string, version: number, seq: number, feature: Feature | undefined): void {
    const had = this.features.get(id);
    if (!had || had.version >= version) return;
    if (feature) {
      this.features.set(id, feature);
      this.change("update", id, seq, feature);
    } else {
      this.features.delete(id);
      this.locks.delete(id);
      this.ownDeletes.set(id, seq);
      this.change("delete", id, seq, had);
    }
  }

  private onFeature(p: FeaturePush): void {
    this.seq = Math.max(this.seq, p.seq);
    const had = this.features.get(p.id);
    // Already held at this version or a later one (this client's own acknowledged edit):
    // the push would take it back, or say again what is held.
    if (had && had.version >= p.version && (p.kind === "update" || p.kind === "enter")) return;
    // Pushes come in sequence order: one older than this client's own delete of the feature
    // must not bring it back; the delete's own push ends the wait.
    const deletedAt = this.ownDeletes.get(p.id);
    if (deletedAt !== undefined) {
      if (p.seq < deletedAt) return;
      this.ownDeletes.delete(p.id);
      if (p.seq === deletedAt && !had) {
        if (p.kind === "delete") this.locks.delete(p.id);
        return;
      }
    }
    switch (p.kind) {
      case "enter":
        if (p.feature) {
          this.features.set(p.id, p.feature);
          this.change(had ? "update" : "enter", p.id, p.seq, p.feature);
        }
        break;
      case "update": {
        if (p.feature) {
          this.features.set(p.id, p.feature);
          this.change(had ? "update" : "enter", p.id, p.seq, p.feature);
          break;
        }
        if (!had) {
          // A partial update of a feature we do not hold (should not happen): fetch it whole.
          void this.host
            .request<{ feature: Feature }>("feature.get", { layer: this.layer, id: p.id })
            .then(({ feature }) => {
              if (this.closed || this.features.has(p.id)) return;
              this.features.set(p.id, feature);
              this.change("enter", p.id, p.seq, feature);
            })
            .catch(() => undefined);
          break;
        }
        const properties = { ...had.properties };
        const patch: { properties?: Record<string, unknown>; geometry?: Geometry | null } = {};
        if (p.properties) {
          patch.properties = p.properties;
          for (const [k, v] of Object.entries(p.properties)) {
            if (v === null) delete properties[k];
            else properties[k] = v;
          }
        }
        let geometry = had.geometry;
        if ("geometry" in p && p.geometry !== undefined) {
          geometry = p.geometry;
          patch.geometry = p.geometry;
        }
        const next: Feature = { ...had, properties, geometry, version: p.version };
        this.features.set(p.id, next);
        this.change("update", p.id, p.seq, next, patch);
        break;
      }
      case "exit":
      case "delete":
        this.features.delete(p.id);
        if (p.kind === "delete") this.locks.delete(p.id);
        if (had || p.kind === "delete") this.change(p.kind, p.id, p.seq, had);
        break;
    }
  }

  private change(
    kind: FeatureKind,
    id: string,
    seq: number,
    feature: Feature | undefined,
    patch?: FeatureChange["patch"],
  ): void {
    this.push({ type: "change", kind, id, seq, feature, ...(patch ? { patch } : {}) });
  }
}

// ---- tiles ------------------------------------------------------------------------------

/** How a tile subscription receives changed tiles (`tile.subscribe` `mode`). */
export type TileMode = "delta" | "full" | "notify";

/** Which tiles a tile subscription covers: a bbox at a zoom, or explicit `"z/x/y"` keys. */
export type TileSelection =
  | { viewport: { bbox: [number, number, number, number]; zoom: number } }
  | { tiles: string[] };

/** An item of a tile subscription. */
export type TileEvent = {
  type: "tile";
  /** `"z/x/y"`. */
  tile: string;
  z: number;
  x: number;
  y: number;
  version: number;
  etag: string;
  /** The whole tile after this change (modes `delta` and `full`); absent for notices. */
  data?: Uint8Array;
  /** Whether it came as a delta. */
  delta: boolean;
};

/** Parses `"z/x/y"`. */
export function parseTileKey(key: string): { z: number; x: number; y: number } {
  const [z, x, y] = key.split("/").map(Number);
  return { z: z ?? 0, x: x ?? 0, y: y ?? 0 };
}

function toBytes(v: unknown): Uint8Array | undefined {
  if (v instanceof Uint8Array) return v;
  if (typeof v === "string") {
    const bin = atob(v);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  return undefined;
}

/**
 * A tile subscription. In `delta` and `full` modes it keeps the bytes of every tile it holds
 * and rebuilds changed tiles from deltas; a delta that does not apply makes it ask for the
 * whole tile again. In `notify` mode it only tracks versions (a map refetches over HTTP).
 */
export class TileSubscription extends Subscription<TileEvent> {
  /** The tiles held: version and (except in `notify` mode) bytes. */
  readonly held = new Map<string, { version: number; etag: string; data?: Uint8Array }>();
  /** The tiles of the current selection, as the server last listed them. */
  current: string[] = [];

  constructor(
    host: SubscriptionHost,
    readonly layer: string,
    private selection: TileSelection,
    readonly mode: TileMode,
    private readonly applyDelta: (base: Uint8Array, delta: Uint8Array) => Uint8Array,
  ) {
    super(host);
  }

  private have(): Record<string, number> {
    const have: Record<string, number> = {};
    for (const [k, v] of this.held) have[k] = v.version;
    return have;
  }

  protected subscribeRequest(): [string, Record<string, unknown>] {
    return ["tile.subscribe", { layer: this.layer, ...this.selection, mode: this.mode, have: this.have() }];
  }

  protected onSubscribed(result: unknown): void {
    this.current = (result as { tiles: string[] }).tiles ?? [];
  }

  /** Moves the subscription to other tiles; resolves with the tiles added and removed. */
  async setSelection(selection: TileSelection): Promise<{ added: string[]; removed: string[] } | null> {
    this.selection = selection;
    if (this.sid === null) return null; // the next subscription carries it
    const r = await this.host.request<{ added: string[]; removed: string[] }>("tile.update", {
      sub: this.sid,
      ...selection,
      have: this.have(),
    });
    for (const t of r.removed) this.held.delete(t);
    const keep = new Set(this.current.filter((t) => !r.removed.includes(t)));
    for (const t of r.added) keep.add(t);
    this.current = [...keep];
    return r;
  }

  handlePush(method: string, p: Record<string, unknown>): void {
    if (method === "unsubscribed") {
      this.fail(new Error(`the server ended the subscription: ${String(p.reason)}`));
      return;
    }
    if (method !== "tile") return;
    const key = p.tile as string;
    const version = p.version as number;
    const etag = p.etag as string;
    const kind = p.kind as "delta" | "full" | "notify";
    let data: Uint8Array | undefined;
    if (kind === "full") data = toBytes(p.data);
    else if (kind === "delta") {
      const base = this.held.get(key);
      const delta = toBytes(p.data);
      try {
        if (!base?.data || !delta || base.version !== p.base) throw new Error("no base for the delta");
        data = this.applyDelta(base.data, delta);
      } catch {
        // Ask for the whole tile: tell the server we hold nothing of it.
        this.held.delete(key);
        if (this.sid !== null) {
          void this.host
            .request("tile.update", { sub: this.sid, ...this.selection, have: { ...this.have(), [key]: 0 } })
            .catch(() => undefined);
        }
        return;
      }
    }
    this.held.set(key, { version, etag, ...(data ? { data } : {}) });
    this.push({ type: "tile", tile: key, ...parseTileKey(key), version, etag, delta: kind === "delta", ...(data ? { data } : {}) });
  }
}
