/**
 * Frame encoding and decoding for the three encodings of docs/PROTOCOL.md: JSON-RPC 2.0
 * objects in text frames, MessagePack arrays (`[0,id,method,params]`, `[1,id,error,result]`,
 * `[2,method,params]`) in binary frames, and the same with Zstandard compression.
 */
import { decode as mpDecode, encode as mpEncode } from "@msgpack/msgpack";
import { decompress } from "fzstd";

import type { Encoding } from "./types.js";

/** A request id. The client uses integers; servers may echo strings from other clients. */
export type Id = number | string;

/** An error object as it travels in a response. */
export interface WireError {
  code: number;
  message: string;
  data?: unknown;
}

/** A decoded frame from the server. */
export type Incoming =
  | { kind: "response"; id: Id | null; result?: unknown; error?: WireError }
  | { kind: "notification"; method: string; params: unknown };

const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

/** Encodes a request (`id` given) or a notification (`id` undefined). */
export function encodeFrame(
  enc: Encoding,
  method: string,
  params: unknown,
  id?: Id,
): string | Uint8Array {
  if (enc === "json") {
    const frame: Record<string, unknown> = { jsonrpc: "2.0" };
    if (id !== undefined) frame.id = id;
    frame.method = method;
    if (params !== undefined) frame.params = params;
    return JSON.stringify(frame);
  }
  const arr = id === undefined ? [2, method, params ?? {}] : [0, id, method, params ?? {}];
  // `ignoreUndefined` makes absent members absent, as JSON.stringify does: the server tells
  // an absent `geometry` (leave it) from an explicit null (remove it).
  return mpEncode(arr, { ignoreUndefined: true });
}

function isZstd(b: Uint8Array): boolean {
  return b.length >= 4 && ZSTD_MAGIC.every((m, i) => b[i] === m);
}

function toBytes(data: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return new Uint8Array(data);
}

/**
 * Decodes one frame from the server. `maxBytes` bounds a decompressed frame (the session's
 * `max_frame_bytes`), so a hostile frame cannot make the client allocate without bound.
 */
export function decodeFrame(
  enc: Encoding,
  data: string | ArrayBuffer | ArrayBufferView,
  maxBytes = 64 * 1024 * 1024,
): Incoming {
  let value: unknown;
  if (typeof data === "string") {
    if (enc !== "json") throw new Error("a text frame on a MessagePack connection");
    value = JSON.parse(data);
    return fromJson(value);
  }
  if (enc === "json") throw new Error("a binary frame on a JSON connection");
  let bytes = toBytes(data);
  if (enc === "msgpack-zstd" && isZstd(bytes)) {
    bytes = decompress(bytes);
    if (bytes.length > maxBytes) throw new Error(`a decompressed frame of ${bytes.length} bytes`);
  }
  value = mpDecode(bytes);
  return fromMsgpack(value);
}

function fromJson(v: unknown): Incoming {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON-RPC object");
  const o = v as Record<string, unknown>;
  if (typeof o.method === "string" && !("id" in o)) {
    return { kind: "notification", method: o.method, params: o.params };
  }
  if ("result" in o || "error" in o) {
    const id = (o.id ?? null) as Id | null;
    if (o.error !== undefined && o.error !== null) return { kind: "response", id, error: o.error as WireError };
    return { kind: "response", id, result: o.result };
  }
  throw new Error("neither a response nor a notification");
}

function fromMsgpack(v: unknown): Incoming {
  if (!Array.isArray(v)) throw new Error("not a MessagePack-RPC array");
  switch (v[0]) {
    case 1: {
      const [, id, error, result] = v as [number, Id | null, WireError | null, unknown];
      if (error !== null && error !== undefined) return { kind: "response", id, error };
      return { kind: "response", id, result };
    }
    case 2:
      if (typeof v[1] !== "string") throw new Error("a notification without a method");
      return { kind: "notification", method: v[1], params: v[2] };
    default:
      throw new Error(`unknown frame type ${String(v[0])}`);
  }
}
