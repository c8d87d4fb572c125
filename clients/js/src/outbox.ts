/**
 * The outbox: edits not yet acknowledged by the server. Every edit gets an operation id
 * (`op_id`) when it is made, is stored before it is sent, and leaves the store only when the
 * server has answered it. A retry after a reconnect (or after a page reload, with
 * {@link IndexedDbOutboxStore}) carries the same `op_id`, so the server applies it at most
 * once; a retried edit the server had already applied is answered with `replayed: true`.
 */

/** One queued edit. */
export interface OutboxEntry {
  /** The idempotency key sent as `op_id`. */
  opId: string;
  /** Position in the queue (edits are sent in this order). */
  order: number;
  /** `feature.create`, `feature.patch`, `feature.replace`, `feature.delete` or `feature.batch`. */
  method: string;
  /** The request's params, `op_id` included. */
  params: Record<string, unknown>;
  /** The layer the edit is for. */
  layer: string;
  /** The feature it edits, when it edits one. */
  featureId?: string;
  /** When it was queued (ms since the epoch). */
  createdAt: number;
  /**
   * What the application keeps with the edit, stored with it (so also over a page reload):
   * for example the feature as it was when the edit was made, to merge against if the
   * server refuses the edit as a conflict.
   */
  meta?: unknown;
}

/** Where the outbox keeps its entries. */
export interface OutboxStore {
  /** Every stored entry, in any order. */
  load(): Promise<OutboxEntry[]>;
  /** Stores or replaces an entry. */
  put(entry: OutboxEntry): Promise<void>;
  /** Removes an entry. */
  delete(opId: string): Promise<void>;
}

/** Keeps entries in memory: they survive reconnects, not a restart of the program. */
export class MemoryOutboxStore implements OutboxStore {
  private entries = new Map<string, OutboxEntry>();

  async load(): Promise<OutboxEntry[]> {
    return [...this.entries.values()].map((e) => structuredClone(e));
  }

  async put(entry: OutboxEntry): Promise<void> {
    this.entries.set(entry.opId, structuredClone(entry));
  }

  async delete(opId: string): Promise<void> {
    this.entries.delete(opId);
  }
}

function promisify<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/**
 * Keeps entries in the browser's IndexedDB, so an edit made just before a page refresh, or
 * while offline, is sent after the page loads again. One database per `name`; use a name per
 * server (and per user) so two apps on one origin do not share an outbox.
 */
export class IndexedDbOutboxStore implements OutboxStore {
  private db: Promise<IDBDatabase>;

  constructor(name = "geostream-outbox", factory: IDBFactory = globalThis.indexedDB) {
    if (!factory) throw new Error("IndexedDB is not available here; use MemoryOutboxStore");
    this.db = new Promise((resolve, reject) => {
      const req = factory.open(name, 1);
      req.onupgradeneeded = () => {
        req.result.createObjectStore("edits", { keyPath: "opId" });
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  private async store(mode: IDBTransactionMode): Promise<IDBObjectStore> {
    const db = await this.db;
    return db.transaction("edits", mode).objectStore("edits");
  }

  async load(): Promise<OutboxEntry[]> {
    return promisify((await this.store("readonly")).getAll() as IDBRequest<OutboxEntry[]>);
  }

  async put(entry: OutboxEntry): Promise<void> {
    const s = await this.store("readwrite");
    const finished = done(s.transaction);
    s.put(entry);
    await finished;
  }

  async delete(opId: string): Promise<void> {
    const s = await this.store("readwrite");
    const finished = done(s.transaction);
    s.delete(opId);
    await finished;
  }
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

/** A random id (RFC 4122 v4 where `crypto.randomUUID` exists). */
export function randomId(): string {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  let s = "";
  for (let i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
  return s;
}

/** What the edit queue needs from the client. */
export interface EditSender {
  /** Whether requests can be sent now. */
  isConnected(): boolean;
  /** Sends a request; `done` is called once with the error or the result. */
  sendEdit(method: string, params: Record<string, unknown>, done: (err: Error | null, result?: unknown) => void): void;
}

/** Outcome callbacks of the edit queue. */
export interface EditQueueHooks {
  /** The server acknowledged an entry (also one queued before a page reload). */
  acked(entry: OutboxEntry, result: unknown): void;
  /** The server refused an entry for good (conflict, locked, invalid...). */
  rejected(entry: OutboxEntry, error: Error): void;
  /** The number of queued entries changed. */
  changed(pending: number): void;
  /** Whether an error means "try again later" (keep the entry). */
  isTransient(error: Error): boolean;
  /** Delay before retrying after a transient error, by attempt. */
  retryDelay(attempt: number): number;
}

/**
 * Sends outbox entries one at a time, in order. One at a time because a later edit of the
 * same feature must carry the version the earlier one produced: when an entry for a feature
 * is acknowledged, the `version` of the next queued edits of that feature is moved forward
 * to the acknowledged version (they were made on top of it).
 */
export class EditQueue {
  private entries: OutboxEntry[] = [];
  private waiters = new Map<string, { resolve: (r: unknown) => void; reject: (e: Error) => void }>();
  private inFlight: string | null = null;
  private order = 0;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** Settles once the stored entries are loaded. */
  readonly loaded: Promise<void>;

  constructor(
    private readonly store: OutboxStore,
    private readonly sender: EditSender,
    private readonly hooks: EditQueueHooks,
  ) {
    this.loaded = store
      .load()
      .then((stored) => {
        stored.sort((a, b) => a.order - b.order);
        const known = new Set(this.entries.map((e) => e.opId));
        this.entries = [...stored.filter((e) => !known.has(e.opId)), ...this.entries];
        this.order = Math.max(this.order, ...stored.map((e) => e.order + 1));
        this.hooks.changed(this.entries.length);
      })
      .catch(() => undefined)
      .then(() => this.kick());
  }

  /** Queued (unacknowledged) entries, oldest first. */
  pending(): readonly OutboxEntry[] {
    return this.entries;
  }

  /** Stores an edit, then sends it when its turn comes; resolves with the server's result. */
  async add(method: string, params: Record<string, unknown>, layer: string, featureId?: string, meta?: unknown): Promise<unknown> {
    const opId = (params.op_id as string | undefined) ?? randomId();
    const entry: OutboxEntry = {
      opId,
      order: this.order++,
      method,
      params: { ...params, op_id: opId },
      layer,
      createdAt: Date.now(),
      ...(featureId !== undefined ? { featureId } : {}),
      ...(meta !== undefined ? { meta } : {}),
    };
    const result = new Promise<unknown>((resolve, reject) => this.waiters.set(opId, { resolve, reject }));
    await this.store.put(entry);
    this.entries.push(entry);
    this.hooks.changed(this.entries.length);
    this.kick();
    return result;
  }

  /** Sends the next entry if the connection is up and nothing is in flight. */
  kick(): void {
    if (this.inFlight !== null || this.retryTimer !== null || !this.sender.isConnected()) return;
    const entry = this.entries[0];
    if (!entry) return;
    this.inFlight = entry.opId;
    this.sender.sendEdit(entry.method, entry.params, (err, result) => this.settle(entry, err, result));
  }

  /** The connection dropped: whatever was in flight will be sent again (same `op_id`). */
  disconnected(): void {
    this.inFlight = null;
    if (this.retryTimer !== null) {
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
    }
  }

  private settle(entry: OutboxEntry, err: Error | null, result: unknown): void {
    if (this.inFlight !== entry.opId) return; // answered after a reconnect made it moot
    this.inFlight = null;
    if (err && this.hooks.isTransient(err)) {
      const delay = this.hooks.retryDelay(this.attempt++);
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.kick();
      }, delay);
      return;
    }
    this.attempt = 0;
    this.entries = this.entries.filter((e) => e.opId !== entry.opId);
    if (!err && entry.featureId !== undefined) {
      const version = (result as { version?: number } | undefined)?.version;
      if (typeof version === "number") this.advanceVersions(entry, version);
    }
    void this.store.delete(entry.opId).catch(() => undefined);
    const w = this.waiters.get(entry.opId);
    this.waiters.delete(entry.opId);
    if (err) {
      this.hooks.rejected(entry, err);
      w?.reject(err);
    } else {
      this.hooks.acked(entry, result);
      w?.resolve(result);
    }
    this.hooks.changed(this.entries.length);
    this.kick();
  }

  private advanceVersions(acked: OutboxEntry, version: number): void {
    for (const e of this.entries) {
      if (e.layer === acked.layer && e.featureId === acked.featureId && typeof e.params.version === "number") {
        e.params = { ...e.params, version };
        void this.store.put(e).catch(() => undefined);
        break; // the next one moves forward when this one is acknowledged
      }
    }
  }
}
