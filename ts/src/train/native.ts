/**
 * The training part of the native binding (`bindings/node/src/train.rs`), typed. Loaded
 * through the package's one native loader.
 */

import type { NativeForwardInput, NativeLoadOptions, NativeTensor } from "../native.js";
import { loadNative } from "../native.js";

/** A collated batch held by the engine (`Batch` in train.rs). */
export interface NativeBatch {
  readonly kind: "pairs" | "documents";
  readonly size: number;
  readonly seqLen: number;
  readonly imageSlots: number;
  readonly epoch: number;
  readonly position: unknown;
  readonly keys: string[];
  readonly flipped: boolean[];
  readonly numImages: number[];
  inputIds(): NativeTensor<Int32Array>;
  attentionMask(): NativeTensor<Int32Array>;
  labels(): NativeTensor<Int32Array>;
  visionX(): NativeTensor<Float32Array>;
}

export interface NativeDataLoaderOptions {
  kind: "pairs" | "documents";
  tokenizer: string;
  config?: Record<string, unknown>;
  position?: unknown;
  prefetch?: number;
}

export interface NativeDataLoader {
  next(): Promise<NativeBatch | null>;
  readonly endPosition: unknown;
  readonly length: number;
  readonly config: Record<string, unknown>;
  readonly tokens: { media: number; endOfChunk: number; pad: number; eos: number; vocabSize: number };
  close(): Promise<void>;
}

export interface NativeTrainerInfo {
  step: number;
  skippedSteps: number;
  parameterCount: number;
  config: Record<string, unknown>;
  model: { imageSize: number; vocabSize: number; [key: string]: unknown };
  tokens: { media: number; endOfChunk: number };
  resumed: boolean;
  dataPosition: unknown;
}

/** The core's `StepStats` as JSON (NaN arrives as null). */
export interface NativeStepStats {
  step: number;
  loss: number | null;
  parts: { microBatch: number; dataset: string; loss: number | null; lossMultiplier: number }[];
  gradNorm: number | null;
  lr: number;
  skipped: boolean;
  skipReason: string | null;
  samples: number;
  seconds: number;
}

export interface NativeNamedTensor {
  name: string;
  tensor: NativeTensor<Float32Array>;
}

export interface NativeGradients {
  loss: number;
  gradients: NativeNamedTensor[];
  embeddingRowsName: string;
  embeddingRowIds: number[] | null;
}

export interface NativeTrainer {
  readonly info: NativeTrainerInfo;
  gradients(input: NativeForwardInput): Promise<NativeGradients>;
  parameters(): Promise<NativeNamedTensor[]>;
  frozenFingerprint(): Promise<{ visionTower: string; languageModel: string; embeddingTable: string }>;
  step(batches: NativeBatch[], microBatch: number[], lossMultipliers: number[]): Promise<NativeStepStats>;
  save(dir: string, dataPosition: unknown): Promise<{ step: number; skippedSteps: number }>;
  export(path: string): Promise<void>;
  readonly disposed: boolean;
  dispose(): Promise<void>;
}

export interface NativeTrainBinding {
  DataLoader: { open(options: NativeDataLoaderOptions): Promise<NativeDataLoader> };
  Trainer: {
    create(options: {
      model: NativeLoadOptions;
      config: Record<string, unknown>;
      resumeFrom?: string;
    }): Promise<NativeTrainer>;
  };
}

/** The binding's training classes. */
export function trainBinding(): NativeTrainBinding {
  return loadNative() as unknown as NativeTrainBinding;
}
