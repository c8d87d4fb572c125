/**
 * Wire types of the geostream protocol, version 1. They mirror
 * `crates/geostream-core/src/api.rs` member for member; `docs/PROTOCOL.md` describes them.
 * Servers may add members within version 1, so every type here is open to extra fields.
 */

/** The encodings a connection can use, named as in `hello.encoding`. */
export type Encoding = "json" | "msgpack" | "msgpack-zstd";

/** The WebSocket subprotocol of each encoding. */
export const SUBPROTOCOLS: Record<Encoding, string> = {
  json: "geostream.v1.json",
  msgpack: "geostream.v1.msgpack",
  "msgpack-zstd": "geostream.v1.msgpack-zstd",
};

/** Connection state of a {@link GeostreamClient}. */
export enum State {
  /** Not connected and not trying (before `connect()`, or offline). */
  Disconnected = "disconnected",
  /** Opening a socket, or waiting for the next attempt. */
  Connecting = "connecting",
  /** Connected and past `hello`: requests and pushes flow. */
  Connected = "connected",
  /** Closed for good by `close()` or a close code that must not be retried. */
  Closed = "closed",
}

/** A position in a channel's stream. */
export interface Position {
  offset: number;
  epoch: string;
}

export interface ClientSoftware {
  name: string;
  version: string;
}

export interface HelloParams {
  protocol?: number;
  token?: string;
  client?: ClientSoftware;
  client_id?: string;
  info?: unknown;
}

export interface HelloResult {
  session: string;
  server: { name: string; version: string };
  protocol: number;
  encoding: Encoding;
  user?: string;
  limits: { max_frame_bytes: number; max_subscriptions: number; outbox_bytes: number };
  heartbeat: { ping_interval_ms: number; idle_timeout_ms: number };
}

/** A client as others see it in presence. */
export interface ClientInfo {
  session: string;
  user?: string;
  info?: unknown;
}

export interface ChannelSubscribeResult {
  sub: number;
  channel: string;
  position: Position;
  recovered?: boolean;
  replayed?: number;
}

export interface HistoryMessage {
  offset: number;
  data: unknown;
}

export interface ChannelHistoryResult {
  messages: HistoryMessage[];
  position: Position;
  complete: boolean;
  more: boolean;
}

/** A GeoJSON geometry (RFC 7946). */
export interface Geometry {
  type: string;
  coordinates?: unknown;
  geometries?: Geometry[];
}

/** A feature as the server keeps it: GeoJSON plus `version` and `updated`. */
export interface Feature {
  type: "Feature";
  id: string;
  geometry: Geometry | null;
  properties: Record<string, unknown>;
  version: number;
  updated: string;
}

/** A feature as a client sends it. */
export interface FeatureInput {
  type?: "Feature";
  id?: string | number;
  geometry: Geometry | null;
  properties?: Record<string, unknown> | null;
}

/** What a `feature` push means for its subscriber. */
export type FeatureKind = "enter" | "update" | "exit" | "delete";

/** Params of a `feature` push. */
export interface FeaturePush {
  sub: number;
  layer: string;
  seq: number;
  kind: FeatureKind;
  id: string;
  version: number;
  feature?: Feature;
  properties?: Record<string, unknown>;
  geometry?: Geometry | null;
}

/** Params of a `snapshot` push. */
export interface SnapshotPush {
  sub: number;
  layer: string;
  seq: number;
  features: Feature[];
  last: boolean;
}

/** Params of a `resync` push. */
export interface ResyncPush {
  sub: number;
  layer: string;
  seq: number;
  reason: string;
}

/** A lock as clients see it. */
export interface LockInfo {
  layer: string;
  id: string;
  /** The holder's client id (`hello.client_id`, or its session id). */
  client: string;
  user?: string;
  /** Expiry, milliseconds since the Unix epoch. */
  until_ms: number;
}

/** Params of a `lock` push. */
export interface LockPush extends LockInfo {
  sub: number;
  locked: boolean;
}

/** A subscription or query filter; every part given must match. */
export interface FilterSpec {
  /** `[min_lon, min_lat, max_lon, max_lat]`. */
  bbox?: [number, number, number, number];
  /** A GeoJSON Polygon or MultiPolygon. */
  geometry?: Geometry;
  /** Centre `[lon, lat]` of a circle (with `radius`). */
  point?: [number, number];
  /** Circle radius in metres. */
  radius?: number;
  /** An instant or interval: `2020-06-30T00:00:00Z/..`. */
  datetime?: string;
  /** CQL2 text or JSON. */
  filter?: string | Record<string, unknown>;
}

export interface LayerSubscribeResult {
  sub: number;
  layer: string;
  seq: number;
  recovered?: boolean;
  replayed?: number;
}

export interface SubscriptionUpdateResult {
  sub: number;
  seq: number;
  entered: number;
  exited: number;
}

export interface LayerInfo {
  name: string;
  title?: string;
  description?: string;
  last_writer_wins?: boolean;
  seq?: number;
  [key: string]: unknown;
}

export interface LayerCreateParams {
  name: string;
  title?: string;
  description?: string;
  last_writer_wins?: boolean;
}

/** The result of one applied edit. */
export interface EditResult {
  id: string;
  version: number;
  seq: number;
  feature?: Feature;
  /** True when this answers a repeated `op_id` (nothing was applied again). */
  replayed?: boolean;
}

export interface FeatureQueryResult {
  type: "FeatureCollection";
  features: Feature[];
  next_offset?: number | null;
  seq: number;
}

export interface ProgressParams {
  id: number | string;
  done: number;
  total?: number;
  message?: string;
}
