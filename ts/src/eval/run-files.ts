/**
 * The files of an evaluation run in its output folder: `run.json` (the settings, so a rerun
 * resumes only a run made the same way), `predictions.jsonl` (one line per item, appended as
 * items finish, so an interrupted run loses nothing), and at the end `predictions.json` and
 * `report.json`, written atomically.
 */

import { appendFile, mkdir, readFile, rename, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";

import { ErrorCode, FlamingoError } from "../errors.js";
import { EvalErrorCode } from "./errors.js";

/** What every prediction line holds: the item it is for. */
export interface PredictionRecord {
  id: string;
}

export const RUN_FILE = "run.json";
export const PREDICTIONS_JSONL = "predictions.jsonl";
export const PREDICTIONS_JSON = "predictions.json";
export const REPORT_JSON = "report.json";

function ioError(what: string, error: unknown): FlamingoError {
  return new FlamingoError(ErrorCode.Io, `${what}: ${(error as Error).message}`, { cause: error });
}

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw ioError(`cannot read ${file}`, error);
  }
}

/** Writes `value` as JSON through a temporary file and a rename, so a reader never sees half a file. */
export async function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  const temporary = `${file}.${process.pid}.tmp`;
  try {
    await writeFile(temporary, `${JSON.stringify(value, null, 2)}\n`);
    await rename(temporary, file);
  } catch (error) {
    throw ioError(`cannot write ${file}`, error);
  }
}

/** An output folder opened for a run: the predictions already made, and a way to add more. */
export interface RunFiles<P extends PredictionRecord> {
  /** Predictions of earlier runs with the same settings, by item id. */
  done: Map<string, P>;
  /** Appends predictions to `predictions.jsonl`. */
  append(records: readonly P[]): Promise<void>;
  /** Writes `predictions.json` and `report.json`. */
  finish(predictions: readonly P[], report: unknown): Promise<void>;
}

/**
 * Opens (creating it if needed) an output folder for a run with `settings`. A folder holding a
 * run with other settings is refused (`ERR_EVAL_RUN_MISMATCH`) rather than mixed with it. A
 * last line cut short by a crash is dropped; any other unreadable line is an error.
 */
export async function openRunFiles<P extends PredictionRecord>(
  dir: string,
  settings: Record<string, unknown>,
): Promise<RunFiles<P>> {
  try {
    await mkdir(dir, { recursive: true });
  } catch (error) {
    throw ioError(`cannot create the output folder ${dir}`, error);
  }
  const runFile = join(dir, RUN_FILE);
  const jsonl = join(dir, PREDICTIONS_JSONL);
  const wanted = JSON.stringify(settings);
  const existing = await readOptional(runFile);
  if (existing !== undefined) {
    let found: unknown;
    try {
      found = JSON.parse(existing);
    } catch {
      found = undefined;
    }
    if (JSON.stringify(found) !== wanted) {
      throw new FlamingoError(
        EvalErrorCode.RunMismatch,
        `${dir} holds a run with other settings (${existing.trim().replace(/\s+/g, " ")}); ` +
          `use another output folder, or delete ${RUN_FILE} and ${PREDICTIONS_JSONL} to start over`,
      );
    }
  } else {
    await writeJsonAtomic(runFile, settings);
  }

  const done = new Map<string, P>();
  const text = (await readOptional(jsonl)) ?? "";
  let kept = 0;
  const lines = text.split("\n");
  for (const [i, line] of lines.entries()) {
    const last = i === lines.length - 1;
    if (line.trim() === "") {
      if (!last) kept += line.length + 1;
      continue;
    }
    let record: P | undefined;
    try {
      const value = JSON.parse(line) as P;
      if (typeof value === "object" && value !== null && typeof value.id === "string") record = value;
    } catch {
      record = undefined;
    }
    if (record === undefined) {
      // An interrupted append leaves an unfinished last line: drop it and redo that item.
      if (last) break;
      throw new FlamingoError(
        EvalErrorCode.Data,
        `${jsonl} line ${i + 1} is not a prediction record; fix or delete the line to resume`,
      );
    }
    if (last) {
      // A complete record without its newline: keep it, and end the line before appending.
      kept += line.length;
      done.set(record.id, record);
      try {
        await appendFile(jsonl, "\n");
      } catch (error) {
        throw ioError(`cannot write ${jsonl}`, error);
      }
      kept += 1;
      break;
    }
    kept += line.length + 1;
    done.set(record.id, record);
  }
  if (Buffer.byteLength(text.slice(0, kept)) < Buffer.byteLength(text)) {
    try {
      await truncate(jsonl, Buffer.byteLength(text.slice(0, kept)));
    } catch (error) {
      throw ioError(`cannot repair ${jsonl}`, error);
    }
  }

  return {
    done,
    async append(records) {
      if (records.length === 0) return;
      try {
        await appendFile(jsonl, records.map((r) => `${JSON.stringify(r)}\n`).join(""));
      } catch (error) {
        throw ioError(`cannot write ${jsonl}`, error);
      }
    },
    async finish(predictions, report) {
      await writeJsonAtomic(join(dir, PREDICTIONS_JSON), predictions);
      await writeJsonAtomic(join(dir, REPORT_JSON), report);
    },
  };
}
