/**
 * An in-process fake of the server side of a WebSocket, for tests of reconnects and edge
 * cases: each `new FakeWebSocket(url, protocols)` registers with a {@link FakeServer}, which
 * decides what to answer (JSON encoding only, which is enough to drive the client's logic).
 */
import type { WebSocketLike } from "../src/transport_ws.js";

export type Handler = (conn: FakeConnection, msg: Record<string, unknown>) => void;

export class FakeConnection {
  closed = false;
  readonly received: Record<string, unknown>[] = [];
  constructor(readonly ws: FakeWebSocket) {}

  /** Sends a frame to the client. */
  send(frame: Record<string, unknown>): void {
    if (this.closed) return;
    setTimeout(() => this.ws.onmessage?.({ data: JSON.stringify({ jsonrpc: "2.0", ...frame }) }), 0);
  }

  /** Answers request `id`. */
  reply(id: unknown, result: unknown): void {
    this.send({ id, result });
  }

  /** Answers request `id` with an error. */
  fail(id: unknown, code: number, message: string, data?: unknown): void {
    this.send({ id, error: { code, message, ...(data !== undefined ? { data } : {}) } });
  }

  /** Closes from the server side. */
  close(code = 1012, reason = "restart"): void {
    if (this.closed) return;
    this.closed = true;
    this.ws.readyState = 3;
    setTimeout(() => this.ws.onclose?.({ code, reason }), 0);
  }
}

export class FakeServer {
  readonly connections: FakeConnection[] = [];
  /** Whether new connections are accepted (false: they fail at once, as a down server). */
  up = true;
  constructor(public handler: Handler) {}

  get last(): FakeConnection {
    const c = this.connections[this.connections.length - 1];
    if (!c) throw new Error("no connection yet");
    return c;
  }

  /** A WebSocket constructor bound to this server. */
  factory(): new (url: string, protocols?: string | string[]) => WebSocketLike {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const server = this;
    return class extends FakeWebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols, server);
      }
    };
  }

  accept(ws: FakeWebSocket): void {
    if (!this.up) {
      ws.readyState = 3;
      setTimeout(() => ws.onclose?.({ code: 1006, reason: "" }), 0);
      return;
    }
    const conn = new FakeConnection(ws);
    ws.conn = conn;
    this.connections.push(conn);
    setTimeout(() => {
      ws.readyState = 1;
      ws.onopen?.({});
    }, 0);
  }
}

export class FakeWebSocket implements WebSocketLike {
  readyState = 0;
  protocol = "geostream.v1.json";
  binaryType = "blob";
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  conn: FakeConnection | null = null;

  constructor(
    readonly url: string,
    readonly protocols: string | string[] | undefined,
    private readonly server: FakeServer,
  ) {
    server.accept(this);
  }

  send(data: string | Uint8Array): void {
    if (typeof data !== "string") throw new Error("the fake server speaks JSON only");
    const msg = JSON.parse(data) as Record<string, unknown>;
    const conn = this.conn;
    if (!conn || conn.closed) return;
    conn.received.push(msg);
    this.server.handler(conn, msg);
  }

  close(code = 1000, reason = ""): void {
    if (this.conn) this.conn.closed = true;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
}

/** Waits until `cond()` holds (polling), or fails after `ms`. */
export async function until(cond: () => boolean, ms = 5000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A handler that answers `hello` and `ping`, and hands other requests to `rest`. */
export function basicHandler(rest: Handler = () => undefined): Handler {
  let session = 0;
  return (conn, msg) => {
    if (msg.method === "hello") {
      conn.reply(msg.id, {
        session: `s${++session}`,
        server: { name: "fake", version: "0" },
        protocol: 1,
        encoding: "json",
        limits: { max_frame_bytes: 1 << 20, max_subscriptions: 128, outbox_bytes: 1 << 22 },
        heartbeat: { ping_interval_ms: 25000, idle_timeout_ms: 60000 },
      });
    } else if (msg.method === "ping") {
      conn.reply(msg.id, {});
    } else rest(conn, msg);
  };
}
