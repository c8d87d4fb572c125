/**
 * Types of the TypeScript client itself. The protocol's wire types are generated from the
 * Rust definitions (crates/geostream-core) into `protocol.ts` and re-exported here, so
 * `import { ... } from "./types.js"` gives both.
 */
export * from "./protocol.js";

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

/** The params of a push as they arrive: its members and the subscription id, `sub`. */
export type Push<T> = T & { sub: number };
