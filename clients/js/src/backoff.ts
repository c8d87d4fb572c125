/** Reconnect delays: exponential backoff with full jitter. */

export interface BackoffOptions {
  /** Delay ceiling of the first attempt, in ms. Default 250. */
  initialMs?: number;
  /** Largest delay ceiling, in ms. Default 10,000. */
  maxMs?: number;
  /** Growth factor per attempt. Default 2. */
  factor?: number;
}

/**
 * The delay before attempt `attempt` (0-based): a uniformly random value in
 * `[0, min(maxMs, initialMs * factor^attempt))` ("full jitter"), so that clients cut off
 * together do not come back together.
 */
export function backoffDelay(attempt: number, opts: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = opts.initialMs ?? 250;
  const max = opts.maxMs ?? 10_000;
  const factor = opts.factor ?? 2;
  const ceiling = Math.min(max, initial * Math.pow(factor, Math.min(attempt, 64)));
  return Math.floor(random() * ceiling);
}
