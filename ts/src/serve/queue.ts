/**
 * Admission control for the service: at most `concurrency` generations run at once, at most
 * `maxWaiting` wait behind them, and anything beyond that is refused at once (HTTP 429)
 * instead of piling up memory and latency.
 */

/** The queue was full when the request arrived. */
export class QueueFullError extends Error {
  constructor(waiting: number) {
    super(`the generation queue is full (${waiting} waiting); retry later`);
    this.name = "QueueFullError";
  }
}

interface Waiter {
  grant: (release: () => void) => void;
  fail: (error: unknown) => void;
}

/** A counting semaphore with a bounded waiting line. */
export class BoundedQueue {
  readonly #concurrency: number;
  readonly #maxWaiting: number;
  #running = 0;
  readonly #waiting: Waiter[] = [];

  constructor(concurrency: number, maxWaiting: number) {
    this.#concurrency = concurrency;
    this.#maxWaiting = maxWaiting;
  }

  /** Requests waiting for a slot. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /** Requests holding a slot. */
  get running(): number {
    return this.#running;
  }

  /**
   * Waits for a slot and resolves with the function that gives it back. Throws a
   * {@link QueueFullError} at once when the line is full; rejects with the signal's reason
   * (and leaves the line) when `signal` aborts while waiting.
   */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#running < this.#concurrency) return Promise.resolve(this.#grant());
    if (this.#waiting.length >= this.#maxWaiting) return Promise.reject(new QueueFullError(this.#waiting.length));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        grant: (release) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(release);
        },
        fail: reject,
      };
      const onAbort = () => {
        const at = this.#waiting.indexOf(waiter);
        if (at >= 0) this.#waiting.splice(at, 1);
        reject(signal?.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(waiter);
    });
  }

  /** Refuses every waiting request with `error` (the service is closing). */
  rejectWaiting(error: unknown): void {
    for (const waiter of this.#waiting.splice(0)) waiter.fail(error);
  }

  #grant(): () => void {
    this.#running++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#running--;
      const next = this.#waiting.shift();
      if (next) next.grant(this.#grant());
    };
  }
}
