/** Errors the client reports. Protocol error codes are those of docs/PROTOCOL.md. */

/** Names of the protocol's error codes. */
export const ERROR_NAMES: Record<number, string> = {
  [-32700]: "parse_error",
  [-32600]: "invalid_request",
  [-32601]: "method_not_found",
  [-32602]: "invalid_params",
  [-32603]: "internal_error",
  [-32800]: "request_cancelled",
  1001: "unauthorized",
  1002: "forbidden",
  1003: "rate_limited",
  1004: "limit_exceeded",
  1005: "timeout",
  1006: "unavailable",
  2001: "unknown_subscription",
  3001: "layer_not_found",
  3002: "feature_not_found",
  3003: "invalid_feature",
  3004: "invalid_filter",
  3005: "conflict",
  3006: "locked",
  3007: "layer_exists",
  4001: "tile_not_found",
  5001: "fence_not_found",
  5002: "fence_exists",
};

/** Codes after which the same request may succeed later (the server or link was the cause). */
const TRANSIENT = new Set([-32603, 1003, 1005, 1006]);

/** An error response from the server. */
export class RpcError extends Error {
  /** The protocol error code (for example 3005 for `conflict`). */
  readonly code: number;
  /** The code's name (`conflict`), or `error_CODE` for codes this client does not know. */
  readonly codeName: string;
  /** The error's `data` member, if any (for `conflict`: `{current}`). */
  readonly data: unknown;

  constructor(code: number, message: string, data?: unknown) {
    super(message);
    this.name = "RpcError";
    this.code = code;
    this.codeName = ERROR_NAMES[code] ?? `error_${code}`;
    this.data = data;
  }

  /** Whether retrying the same request later may succeed. */
  get transient(): boolean {
    return TRANSIENT.has(this.code);
  }
}

/** The connection dropped (or was never up) before the request was answered. */
export class ConnectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConnectionError";
  }
}

/** The request was aborted through its `AbortSignal`, or timed out on the client side. */
export class AbortError extends Error {
  constructor(message = "the request was aborted") {
    super(message);
    this.name = "AbortError";
  }
}
