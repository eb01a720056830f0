/**
 * `dataLoader()`: an async iterator of native training batches. Reading, decoding,
 * tokenizing and collating happen in the engine, on the loader's own threads, ahead of the
 * requests; JavaScript only receives handles (see `bindings/node/src/train.rs`).
 */

import { readFile } from "node:fs/promises";
import { join } from "node:path";

import { ErrorCode, FlamingoError, fromNative, invalidInput } from "../errors.js";
import type { NativeBatch, NativeDataLoader } from "./native.js";
import { trainBinding } from "./native.js";
import { type DataLoaderOptions, DataLoaderOptionsSchema, type DataPosition } from "./options.js";

/**
 * A collated batch, held by the engine: pass it to `trainer.step`. Its contents can be
 * copied out (`inputIds()`, `attentionMask()`, `labels()`, `visionX()`) to inspect them.
 */
export type Batch = Omit<NativeBatch, "position"> & {
  /** The loader's position after this batch (what a training state saves to resume after it). */
  readonly position: DataPosition;
};

/** Skipped samples by reason, with the first few messages. */
export interface SkipStats {
  /** Counts by reason: `invalidRecord`, `missingImage`, `unreadableImage`, `emptyText`, `tooManyImages`, `noImages`, `tooFewImages`, `singleImage`, `singleImageAtEnd`. */
  counts: Record<string, number>;
  /** `"<file>:<line or key>: <reason>: <detail>"` of the first skips. */
  examples: string[];
}

function list(v: string | string[] | undefined): string[] {
  return v === undefined ? [] : typeof v === "string" ? [v] : v;
}

/** The native loader's settings, from the validated options. */
function nativeConfig(o: ReturnType<typeof DataLoaderOptionsSchema.parse>, imageSize: number | undefined) {
  const config: Record<string, unknown> = {
    manifests: list(o.manifest),
    shards: list(o.shards),
  };
  const copy = [
    "batchSize",
    "shuffle",
    "dropLast",
    "maxLength",
    "maxImages",
    "minImages",
    "tooManyImages",
    "simThreshold",
    "minImageKb",
    "singleImageDropProbability",
    "flipProbability",
    "applyExifOrientation",
    "workers",
    "seed",
  ] as const;
  for (const key of copy) {
    if (o[key] !== undefined) config[key] = o[key];
  }
  if (o.epochs !== undefined) config.epochs = Number.isFinite(o.epochs) ? o.epochs : null;
  if (imageSize !== undefined) config.imageSize = imageSize;
  return config;
}

/** `image_size` of a CLIP folder's `config.json` (a `CLIPVisionModel`'s, or a `CLIPModel`'s `vision_config`). */
export async function visionImageSize(visionDir: string): Promise<number> {
  const path = join(visionDir, "config.json");
  let config: { image_size?: number; vision_config?: { image_size?: number } };
  try {
    config = JSON.parse(await readFile(path, "utf8"));
  } catch (cause) {
    throw new FlamingoError(ErrorCode.Config, `cannot read ${path}: ${(cause as Error).message}`, { cause });
  }
  return config.image_size ?? config.vision_config?.image_size ?? 224;
}

/** A stream of batches over one dataset; iterate it with `for await`. */
export class DataLoader implements AsyncIterable<Batch>, AsyncDisposable {
  readonly kind: "pairs" | "documents";
  readonly #options: ReturnType<typeof DataLoaderOptionsSchema.parse>;
  #native: Promise<NativeDataLoader> | undefined;
  #last: Batch | undefined;
  #end: DataPosition | undefined;
  #closed = false;

  /** @internal Use {@link dataLoader}. */
  constructor(options: ReturnType<typeof DataLoaderOptionsSchema.parse>) {
    this.#options = options;
    this.kind = options.kind;
  }

  /** Opens the loader (indexing the data) if not yet open. Iterating opens it too. */
  async open(): Promise<this> {
    await this.#open();
    return this;
  }

  #open(): Promise<NativeDataLoader> {
    if (this.#closed) {
      return Promise.reject(new FlamingoError(ErrorCode.Disposed, "this data loader has been closed"));
    }
    this.#native ??= this.#start().catch((error: unknown) => {
      throw fromNative(error);
    });
    return this.#native;
  }

  async #start(): Promise<NativeDataLoader> {
    const o = this.#options;
    let tokenizer = o.tokenizer;
    let imageSize = o.imageSize;
    if (o.model !== undefined) {
      const load = "loadOptions" in o.model ? o.model.loadOptions : o.model;
      tokenizer ??= load.lm;
      imageSize ??= await visionImageSize(load.vision);
    }
    if (tokenizer === undefined) {
      throw new FlamingoError(
        ErrorCode.InvalidInput,
        "dataLoader needs `tokenizer` (a tokenizer.json or its folder) or `model`",
      );
    }
    return trainBinding().DataLoader.open({
      kind: o.kind,
      tokenizer,
      config: nativeConfig(o, imageSize),
      position: o.position,
      prefetch: o.prefetch,
    });
  }

  /** The next batch, or `undefined` once the configured epochs are done. */
  async next(): Promise<Batch | undefined> {
    const native = await this.#open();
    try {
      const batch = await native.next();
      if (batch === null) {
        this.#end ??= (native.endPosition as DataPosition | null) ?? undefined;
        return undefined;
      }
      this.#last = batch as Batch;
      return batch as Batch;
    } catch (error) {
      throw fromNative(error);
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Batch> {
    for (;;) {
      const batch = await this.next();
      if (batch === undefined) return;
      yield batch;
    }
  }

  /** Samples per epoch, before skipping (opens the loader). */
  async length(): Promise<number> {
    return (await this.#open()).length;
  }

  /** The settings in effect, defaults filled in (opens the loader). */
  async settings(): Promise<Record<string, unknown>> {
    return (await this.#open()).config;
  }

  /**
   * The position after the last batch returned (resuming there continues with the next
   * one); once the data has run out, the end position.
   */
  get position(): DataPosition | undefined {
    return this.#end ?? this.#last?.position ?? this.#options.position;
  }

  /** Samples skipped so far: up to the last batch returned, or all of them once the data has run out. */
  get skipped(): SkipStats {
    return this.position?.skipped ?? { counts: {}, examples: [] };
  }

  /** Stops the loader's threads. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const native = this.#native;
    if (native === undefined) return;
    try {
      await (await native).close();
    } catch {
      // A loader that failed to open has nothing to close.
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * A loader of image–caption pairs or interleaved documents from JSONL manifests or
 * webdataset shards (formats: `flamingo_core::data`, and the README). Nothing is read until
 * the first batch is requested (or {@link DataLoader.open}).
 *
 * ```ts
 * for await (const batch of dataLoader({ kind: "pairs", manifest: "train.jsonl", model, batchSize: 8 })) {
 *   const { loss } = await trainer.step(batch);
 * }
 * ```
 */
export function dataLoader(options: DataLoaderOptions): DataLoader {
  const parsed = DataLoaderOptionsSchema.safeParse(options);
  if (!parsed.success) throw invalidInput("dataLoader options", parsed.error);
  const o = parsed.data;
  if (o.manifest === undefined && o.shards === undefined) {
    throw new FlamingoError(ErrorCode.InvalidInput, "dataLoader needs `manifest` or `shards` (or both)");
  }
  return new DataLoader(o);
}
