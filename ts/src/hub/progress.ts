/**
 * A download progress display for command-line tools: one line rewritten in place on a
 * terminal, and plain periodic lines when the output is a log file or a pipe.
 */

import { z } from "zod";

import { invalidInput } from "../errors.js";
import type { ProgressCallback } from "./download.js";

type Strict<Shape extends z.ZodRawShape> = z.ZodObject<Shape, z.core.$strict>;

/** Where progress is written: a stream, and whether it is a terminal. */
export interface ProgressStream {
  write(text: string): unknown;
  /** A terminal gets one line redrawn in place. */
  isTTY?: boolean;
  /** Terminal width; lines are cut to fit. */
  columns?: number;
}

const renderProgressShape = {
  /** Where to write. Default: `process.stderr`. */
  stream: z
    .custom<ProgressStream>(
      (v) => typeof v === "object" && v !== null && typeof (v as ProgressStream).write === "function",
      "expected a writable stream",
    )
    .optional(),
  /**
   * Whether to redraw one line in place (a terminal) or print lines. Default: the stream's
   * `isTTY`.
   */
  tty: z.boolean().optional(),
  /**
   * Least time between two redraws on a terminal, and between two lines otherwise (plus a line
   * when each file starts and ends), in milliseconds. Default: 100 on a terminal, 5000 otherwise.
   */
  intervalMs: z.number().nonnegative().optional(),
  /** The clock, in milliseconds (for tests). Default: `performance.now`. */
  now: z.custom<() => number>((v) => typeof v === "function", "expected a function").optional(),
};
/** Options of {@link renderProgress}. */
export const RenderProgressOptionsSchema: Strict<typeof renderProgressShape> = z.strictObject(renderProgressShape);
export type RenderProgressOptions = z.infer<typeof RenderProgressOptionsSchema>;

/** A progress display: pass `onProgress` to the downloads, call `done()` at the end. */
export interface ProgressRenderer {
  /** The callback for `onProgress` options. */
  onProgress: ProgressCallback;
  /** Ends the display (ends the in-place line on a terminal). */
  done(): void;
}

/** `1234567` → `"1.23 MB"` (decimal units, as the hub shows file sizes). */
export function formatBytes(bytes: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ${units[unit]}`;
}

function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

/**
 * One progress line: `org/name/file  42% [#####       ] 1.20 GB/2.85 GB 35.1 MB/s ETA 0:47`.
 * `bar` is the bar's width in characters (0: no bar); an unknown total shows bytes only.
 */
export function formatProgressLine(
  file: string,
  bytesDone: number,
  bytesTotal: number | undefined,
  bytesPerSecond: number | undefined,
  bar = 20,
): string {
  const parts = [file];
  if (bytesTotal !== undefined && bytesTotal > 0) {
    const fraction = Math.min(1, bytesDone / bytesTotal);
    parts.push(`${String(Math.floor(fraction * 100)).padStart(3)}%`);
    if (bar > 0) {
      const filled = Math.round(fraction * bar);
      parts.push(`[${"#".repeat(filled)}${" ".repeat(bar - filled)}]`);
    }
    parts.push(`${formatBytes(bytesDone)}/${formatBytes(bytesTotal)}`);
  } else {
    parts.push(formatBytes(bytesDone));
  }
  if (bytesPerSecond !== undefined && bytesPerSecond > 0 && Number.isFinite(bytesPerSecond)) {
    parts.push(`${formatBytes(bytesPerSecond)}/s`);
    if (bytesTotal !== undefined && bytesDone < bytesTotal) {
      parts.push(`ETA ${formatDuration((bytesTotal - bytesDone) / bytesPerSecond)}`);
    }
  }
  return parts.join(" ");
}

/**
 * A progress display for downloads. On a terminal, one line is redrawn in place (at most every
 * `intervalMs`, and whenever a file completes), showing the file in progress; otherwise a line is printed when a file starts, every `intervalMs` while it
 * downloads, and when it is complete. The speed counts only this session's bytes, not the part
 * of a resumed file that was already there.
 */
export function renderProgress(options: RenderProgressOptions = {}): ProgressRenderer {
  const parsed = RenderProgressOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("progress options", parsed.error);
  const stream = parsed.data.stream ?? process.stderr;
  const tty = parsed.data.tty ?? stream.isTTY === true;
  const interval = parsed.data.intervalMs ?? (tty ? 100 : 5000);
  const now = parsed.data.now ?? (() => performance.now());

  let current: { file: string; start: number; startBytes: number; lastDraw: number; finished: boolean } | undefined;
  let lineOpen = false;

  const line = (file: string, done: number, total: number | undefined, t: number): string => {
    const elapsed = (t - (current?.start ?? t)) / 1000;
    const rate = elapsed > 0 ? (done - (current?.startBytes ?? 0)) / elapsed : undefined;
    const text = formatProgressLine(file, done, total, rate, tty ? 20 : 0);
    const width = stream.columns;
    return tty && width !== undefined && width > 1 && text.length >= width ? text.slice(0, width - 1) : text;
  };
  const draw = (text: string): void => {
    if (tty) {
      stream.write(`\r\x1b[2K${text}`);
      lineOpen = true;
    } else {
      stream.write(`${text}\n`);
    }
  };

  const onProgress: ProgressCallback = (done, total, file) => {
    const t = now();
    if (current?.file !== file) {
      current = { file, start: t, startBytes: done, lastDraw: Number.NEGATIVE_INFINITY, finished: false };
    }
    if (current.finished) return;
    const complete = total !== undefined && done >= total;
    if (complete || t - current.lastDraw >= interval) {
      current.lastDraw = t;
      current.finished = complete;
      draw(line(file, done, total, t));
    }
  };

  return {
    onProgress,
    done() {
      if (tty && lineOpen) stream.write("\n");
      lineOpen = false;
    },
  };
}
