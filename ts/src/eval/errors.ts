/** Error codes of the evaluation runner, and the helper that turns a schema failure into one. */

import { prettifyError, type ZodError } from "zod";

import { FlamingoError } from "../errors.js";

/** Codes of evaluation failures (besides `ERR_INVALID_INPUT` for bad options and `ERR_IO`). */
export const EvalErrorCode = {
  /** A dataset file is not valid JSON (or JSONL), or has the wrong shape; the message names the field. */
  Data: "ERR_EVAL_DATA",
  /** Image files the evaluation needs are missing; the message names the first few. */
  MissingImage: "ERR_EVAL_MISSING_IMAGE",
  /** More shots were asked for than the training split has demonstrations. */
  NotEnoughDemos: "ERR_EVAL_NOT_ENOUGH_DEMOS",
  /** The output folder holds a run made with other settings: resuming it would mix the two. */
  RunMismatch: "ERR_EVAL_RUN_MISMATCH",
} as const;
export type EvalErrorCode = (typeof EvalErrorCode)[keyof typeof EvalErrorCode];

/** `ERR_EVAL_DATA` for a file whose content does not fit its schema, naming every offending field. */
export function dataError(file: string, what: string, error: ZodError): FlamingoError {
  return new FlamingoError(EvalErrorCode.Data, `${file} is not a valid ${what}:\n${prettifyError(error)}`, {
    cause: error,
  });
}
