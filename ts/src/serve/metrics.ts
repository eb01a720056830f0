/**
 * The service's counters, rendered in the Prometheus text exposition format (version 0.0.4)
 * for `GET /metrics`. Kept here, small and dependency-free, instead of pulling in a client
 * library: the package must install offline.
 */

/** Upper bounds (seconds) of the request latency histogram. */
export const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] as const;

/** Why a generation stopped before its end. */
export type CancelReason = "disconnect" | "timeout" | "shutdown";

interface Histogram {
  buckets: number[];
  sum: number;
  count: number;
}

const escapeLabel = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");

/** Live figures of one service; `render()` is the `/metrics` body. */
export class ServiceMetrics {
  readonly #requests = new Map<string, number>();
  readonly #latency = new Map<string, Histogram>();
  readonly #cancelled = new Map<CancelReason, number>();
  #tokens = 0;
  #generationSeconds = 0;
  #lastTokensPerSecond = 0;
  #generationsCompleted = 0;
  /** Read at render time: requests waiting for a slot and generations running. */
  readonly #gauges: () => { queueDepth: number; running: number };

  constructor(gauges: () => { queueDepth: number; running: number }) {
    this.#gauges = gauges;
  }

  /** A finished request: its route (`/v1/caption`, or `other`), status code and duration. */
  observeRequest(route: string, status: number, seconds: number): void {
    const key = `${route}\u0000${status}`;
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
    let h = this.#latency.get(route);
    if (!h) {
      h = { buckets: LATENCY_BUCKETS.map(() => 0), sum: 0, count: 0 };
      this.#latency.set(route, h);
    }
    LATENCY_BUCKETS.forEach((bound, i) => {
      if (seconds <= bound) h.buckets[i] = (h.buckets[i] ?? 0) + 1;
    });
    h.sum += seconds;
    h.count++;
  }

  /** Tokens made by one generation (finished or not) and the engine-side seconds it took. */
  observeGeneration(tokens: number, seconds: number, completed: boolean): void {
    this.#tokens += tokens;
    this.#generationSeconds += seconds;
    if (completed) this.#generationsCompleted++;
    if (seconds > 0 && tokens > 0) this.#lastTokensPerSecond = tokens / seconds;
  }

  /** A generation stopped early. */
  observeCancel(reason: CancelReason): void {
    this.#cancelled.set(reason, (this.#cancelled.get(reason) ?? 0) + 1);
  }

  /** Total tokens generated so far. */
  get tokensGenerated(): number {
    return this.#tokens;
  }

  /** Generations stopped early, by reason. */
  cancelled(reason: CancelReason): number {
    return this.#cancelled.get(reason) ?? 0;
  }

  /** The Prometheus text format. */
  render(): string {
    const out: string[] = [];
    const metric = (name: string, type: string, help: string) =>
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);

    metric("flamingo_requests_total", "counter", "HTTP requests answered, by route and status code.");
    for (const [key, n] of [...this.#requests].sort()) {
      const [route = "", status = ""] = key.split("\u0000");
      out.push(`flamingo_requests_total{route="${escapeLabel(route)}",status="${status}"} ${n}`);
    }

    metric("flamingo_request_duration_seconds", "histogram", "Time from request to the end of the response.");
    for (const [route, h] of [...this.#latency].sort()) {
      const r = escapeLabel(route);
      LATENCY_BUCKETS.forEach((bound, i) => {
        out.push(`flamingo_request_duration_seconds_bucket{route="${r}",le="${bound}"} ${h.buckets[i] ?? 0}`);
      });
      out.push(`flamingo_request_duration_seconds_bucket{route="${r}",le="+Inf"} ${h.count}`);
      out.push(`flamingo_request_duration_seconds_sum{route="${r}"} ${h.sum}`);
      out.push(`flamingo_request_duration_seconds_count{route="${r}"} ${h.count}`);
    }

    const { queueDepth, running } = this.#gauges();
    metric("flamingo_queue_depth", "gauge", "Requests waiting for a generation slot.");
    out.push(`flamingo_queue_depth ${queueDepth}`);
    metric("flamingo_generations_running", "gauge", "Generations running now.");
    out.push(`flamingo_generations_running ${running}`);

    metric("flamingo_tokens_generated_total", "counter", "Tokens generated, cancelled generations included.");
    out.push(`flamingo_tokens_generated_total ${this.#tokens}`);
    metric("flamingo_generation_seconds_total", "counter", "Wall time spent generating.");
    out.push(`flamingo_generation_seconds_total ${this.#generationSeconds}`);
    metric("flamingo_tokens_per_second", "gauge", "Tokens per second of the most recent generation.");
    out.push(`flamingo_tokens_per_second ${this.#lastTokensPerSecond}`);
    metric("flamingo_generations_completed_total", "counter", "Generations that ran to their end.");
    out.push(`flamingo_generations_completed_total ${this.#generationsCompleted}`);

    metric("flamingo_generations_cancelled_total", "counter", "Generations stopped early, by reason.");
    for (const reason of ["disconnect", "timeout", "shutdown"] as const) {
      out.push(`flamingo_generations_cancelled_total{reason="${reason}"} ${this.cancelled(reason)}`);
    }
    return `${out.join("\n")}\n`;
  }
}
