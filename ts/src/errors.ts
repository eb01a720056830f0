/**
 * The one error type of the public API. Every failure, whether caught by the TypeScript
 * checks or by the Rust engine, surfaces as a `FlamingoError` whose `code` is stable and
 * whose message says what to change.
 */

import { prettifyError, type ZodError } from "zod";

/**
 * Stable error codes. The engine's codes (from `flamingo_core::Error::code()`) pass through
 * unchanged; the rest are raised by the binding or by this package.
 */
export const ErrorCode = {
  /** A file could not be read. */
  Io: "ERR_IO",
  /** A `config.json` is malformed or inconsistent with what was asked. */
  Config: "ERR_CONFIG",
  /** A `config.json` names an architecture the engine does not implement. */
  UnsupportedModel: "ERR_UNSUPPORTED_MODEL",
  /** A weight is missing or has the wrong shape. */
  Weights: "ERR_WEIGHTS",
  /** A checkpoint lacks required keys (or, in strict mode, has unexpected ones). */
  Checkpoint: "ERR_CHECKPOINT",
  /** A pickle tried to do something other than describe tensors; nothing was executed. */
  UnsafePickle: "ERR_UNSAFE_PICKLE",
  /** A file is truncated or corrupt. */
  CorruptFile: "ERR_CORRUPT_FILE",
  /** Options or tensors that cannot be computed on. */
  InvalidInput: "ERR_INVALID_INPUT",
  /** The operation was cancelled. */
  Aborted: "ABORT_ERR",
  /** A tensor operation failed inside the engine (a bug, or out of memory). */
  Engine: "ERR_ENGINE",
  /** The engine panicked: a bug in flamingo-vlm. */
  EnginePanic: "ERR_ENGINE_PANIC",
  /** The model was disposed before the call. */
  Disposed: "ERR_DISPOSED",
  /** No native binary fits this platform, or it failed to load. */
  NativeBinding: "ERR_NATIVE_BINDING",
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** An error from flamingo-vlm. `code` is one of {@link ErrorCode} (a plain string for codes added later). */
export class FlamingoError extends Error {
  readonly code: ErrorCode | (string & {});

  constructor(code: ErrorCode | (string & {}), message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FlamingoError";
    this.code = code;
  }
}

/**
 * Re-raises an error from the native binding as a `FlamingoError`, keeping its code and
 * message, so that callers get one error type and a stack trace that points at their call.
 */
export function fromNative(error: unknown): FlamingoError {
  if (error instanceof FlamingoError) return error;
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return new FlamingoError(typeof code === "string" ? code : ErrorCode.Engine, error.message, {
      cause: error,
    });
  }
  return new FlamingoError(ErrorCode.Engine, String(error), { cause: error });
}

/** A schema failure as an `ERR_INVALID_INPUT` error naming every offending field. */
export function invalidInput(what: string, error: ZodError): FlamingoError {
  return new FlamingoError(ErrorCode.InvalidInput, `invalid ${what}:\n${prettifyError(error)}`, {
    cause: error,
  });
}
