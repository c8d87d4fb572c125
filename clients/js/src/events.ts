/** A small typed event emitter and the async-iterator bridge used by every stream. */

/** Listener signature for an event map entry. */
export type Listener<T> = (value: T) => void;

/** Emits the events of `Events`, a map from event name to payload type. */
export class Emitter<Events extends Record<string, unknown>> {
  private listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Calls `fn` for every `event`; returns a function that removes it. */
  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => this.off(event, fn);
  }

  /** Calls `fn` for the next `event` only. */
  once<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    const off = this.on(event, (v) => {
      off();
      fn(v);
    });
    return off;
  }

  /** Removes a listener. */
  off<K extends keyof Events>(event: K, fn: Listener<Events[K]>): void {
    this.listeners.get(event)?.delete(fn as Listener<never>);
  }

  /** Calls every listener of `event`; a throwing listener does not stop the others. */
  protected emit<K extends keyof Events>(event: K, value: Events[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as Listener<Events[K]>)(value);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

/**
 * An async iterator over values delivered by callbacks. Values are buffered until the
 * consumer takes them; the buffer holds at most `limit` values, beyond which the iterator
 * fails with an error instead of growing without bound (a consumer that cannot keep up should
 * use callbacks, or coalesce).
 */
export class Channel<T> implements AsyncIterableIterator<T> {
  private buf: T[] = [];
  private waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void }[] = [];
  private done = false;
  private error: unknown = undefined;

  constructor(
    private readonly limit = 100_000,
    private readonly onReturn?: () => void,
  ) {}

  /** Delivers a value. */
  push(v: T): void {
    if (this.done) return;
    const w = this.waiting.shift();
    if (w) {
      w.resolve({ value: v, done: false });
      return;
    }
    if (this.buf.length >= this.limit) {
      this.fail(new Error(`the iterator fell ${this.limit} values behind`));
      return;
    }
    this.buf.push(v);
  }

  /** Ends the iteration after the buffered values. */
  end(): void {
    if (this.done) return;
    this.done = true;
    for (const w of this.waiting.splice(0)) w.resolve({ value: undefined, done: true });
  }

  /** Ends the iteration with an error after the buffered values. */
  fail(e: unknown): void {
    if (this.done) return;
    this.error = e;
    this.done = true;
    for (const w of this.waiting.splice(0)) w.reject(e);
  }

  next(): Promise<IteratorResult<T>> {
    if (this.buf.length > 0) return Promise.resolve({ value: this.buf.shift() as T, done: false });
    if (this.done) {
      if (this.error !== undefined) {
        const e = this.error;
        this.error = undefined;
        return Promise.reject(e);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  return(): Promise<IteratorResult<T>> {
    this.buf = [];
    this.end();
    this.onReturn?.();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
