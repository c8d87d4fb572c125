/**
 * The WebSocket transport. The WebSocket implementation is injected (the browser's, or the
 * `ws` package in Node before version 22), so tests can run the client anywhere.
 */

/** The part of the WHATWG WebSocket API the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor (`globalThis.WebSocket`, or `ws`'s default export). */
export type WebSocketFactory = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Callbacks of one connection attempt. */
export interface TransportHandlers {
  open(protocol: string): void;
  message(data: string | ArrayBuffer | ArrayBufferView): void;
  close(code: number, reason: string): void;
}

/** One WebSocket connection. Callbacks stop once `close()` was called. */
export class WsTransport {
  private ws: WebSocketLike;
  private ended = false;

  constructor(factory: WebSocketFactory, url: string, protocols: string[], private readonly h: TransportHandlers) {
    this.ws = new factory(url, protocols);
    this.ws.binaryType = "arraybuffer";
    this.ws.onopen = () => {
      if (!this.ended) this.h.open(this.ws.protocol);
    };
    this.ws.onmessage = (ev) => {
      if (!this.ended) this.h.message(ev.data as string | ArrayBuffer);
    };
    this.ws.onclose = (ev) => this.finish(ev.code, ev.reason);
    // An error is always followed by a close event, which carries what we need.
    this.ws.onerror = () => undefined;
  }

  /** Sends one frame; false when the socket is not open. */
  send(data: string | Uint8Array): boolean {
    if (this.ended || this.ws.readyState !== 1) return false;
    this.ws.send(data);
    return true;
  }

  /** Closes the socket and reports the close at once (the socket's own event is ignored). */
  close(code = 1000, reason = ""): void {
    try {
      this.ws.close(code, reason);
    } catch {
      // closing a socket that is still connecting throws in some implementations
    }
    this.finish(code, reason);
  }

  private finish(code: number, reason: string): void {
    if (this.ended) return;
    this.ended = true;
    this.h.close(code, reason);
  }
}
