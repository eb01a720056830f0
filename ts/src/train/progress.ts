/**
 * The training progress line: step, loss, learning rate, throughput and the time left.
 */

import type { TrainProgress } from "./options.js";

/** `1h02m`, `3m05s`, `42s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m${String(rest).padStart(2, "0")}s`;
  return `${rest}s`;
}

function bar(fraction: number, width: number): string {
  const filled = Math.max(0, Math.min(width, Math.round(fraction * width)));
  return `${"█".repeat(filled)}${"░".repeat(width - filled)}`;
}

/**
 * One progress line, e.g.
 * `step 12/100 ███░░░░░░░ loss 2.3456 lr 1.00e-4 5.2 samples/s ETA 1m12s`.
 */
export function renderTrainProgress(p: TrainProgress, width = 20): string {
  const steps =
    p.totalSteps === undefined
      ? `step ${p.step}`
      : `step ${p.step}/${p.totalSteps} ${bar(p.step / Math.max(1, p.totalSteps), width)}`;
  const loss = p.skipped ? "skipped" : `loss ${Number.isFinite(p.loss) ? p.loss.toFixed(4) : String(p.loss)}`;
  const lr = `lr ${p.lr.toExponential(2)}`;
  const rate = `${p.samplesPerSecond.toFixed(1)} samples/s`;
  const eta =
    p.etaSeconds === undefined ? `elapsed ${formatDuration(p.elapsedSeconds)}` : `ETA ${formatDuration(p.etaSeconds)}`;
  return `${steps} ${loss} ${lr} ${rate} ${eta}`;
}
