/**
 * `Flamingo`: the model as a user holds it. It validates options and inputs, decides the
 * layer plan, and hands plain typed arrays to the native engine; it does no numeric work.
 */

import { fromNative, invalidInput } from "./errors.js";
import {
  type ContinuationScore,
  type GenerateInput,
  type GenerationHost,
  type GenerationOptions,
  type GenerationResult,
  type GenerationStream,
  generate,
  type NativeGeneration,
  type ScoreInput,
  type ScoreOptions,
  score,
  stream,
  type TextCodec,
} from "./generate.js";
import { type LayerPlan, planLayers } from "./layers.js";
import type { NativeModel } from "./native.js";
import { loadNative } from "./native.js";
import { type LoadOptions, LoadOptionsSchema } from "./options.js";
import {
  type FloatTensor,
  type FloatTensorInput,
  type ForwardInput,
  ForwardInputSchema,
  type ForwardOutput,
  toFloat32,
  toInt32,
  VisionXSchema,
} from "./tensor.js";

/** Sizes and the layer plan of a loaded model. */
export interface ModelSummary {
  /** LM family: `llama`, `opt`, `gpt_neox` or `mpt`. */
  family: string;
  /** `model_type` from the LM's config.json. */
  modelType: string;
  /** Decoder layers in the LM. */
  lmLayers: number;
  /** LM layers with a cross-attention block before them. */
  crossAttnLayers: number[];
  /** LM hidden width. */
  hiddenSize: number;
  /** Rows of the input embedding (= logits width). */
  vocabSize: number;
  /** Vision tower encoder layers. */
  visionLayers: number;
  /** Vision tower width (= Perceiver width). */
  visionHiddenSize: number;
  /** Image side the vision tower takes. */
  imageSize: number;
  /** Every parameter: vision tower, LM and the Flamingo modules. */
  parametersTotal: number;
  /** Perceiver, cross-attention blocks and the input embedding. */
  parametersTrainable: number;
}

/** What loading found in the checkpoint. */
export interface LoadReport {
  /** LM weights taken from the checkpoint instead of the LM's own files. */
  lmOverrides: string[];
  /** Checkpoint keys recognised and deliberately skipped. */
  ignored: string[];
  /** Checkpoint keys that fit nothing (an error with `strict: true`). */
  unexpected: string[];
  /** `true` when there was no checkpoint and the Flamingo modules were freshly initialised. */
  freshInit: boolean;
}

function parseVisionX(visionX: FloatTensorInput): FloatTensor {
  const parsed = VisionXSchema.safeParse(visionX);
  if (!parsed.success) throw invalidInput("visionX", parsed.error);
  return toFloat32(parsed.data);
}

/** An OpenFlamingo model: CLIP vision tower, Perceiver resampler, LM with gated cross-attention. */
export class Flamingo implements AsyncDisposable {
  readonly #native: NativeModel;
  /** Where the cross-attention blocks are, as decided at load time. */
  readonly plan: LayerPlan;
  /** Id of `<|endofchunk|>`: the default stop token of {@link generate}. */
  readonly #endOfChunk: number;

  private constructor(native: NativeModel, plan: LayerPlan, endOfChunk: number) {
    this.#native = native;
    this.plan = plan;
    this.#endOfChunk = endOfChunk;
  }

  /**
   * Loads a model from HF-format vision and LM folders and an optional OpenFlamingo
   * checkpoint. The layer plan is decided from the LM's `config.json` (see
   * {@link LoadOptions.crossAttention}); loading runs off the JS thread.
   */
  static async load(options: LoadOptions): Promise<Flamingo> {
    const parsed = LoadOptionsSchema.safeParse(options);
    if (!parsed.success) throw invalidInput("load options", parsed.error);
    const o = parsed.data;
    const plan = await planLayers(o.lm, o.crossAttention, o.decoderLayersPath);
    const binding = loadNative();
    let native: NativeModel;
    try {
      native = await binding.FlamingoModel.load({
        visionDir: o.vision,
        lmDir: o.lm,
        checkpoint: o.checkpoint,
        mediaTokenId: o.tokens.media,
        endOfChunkTokenId: o.tokens.endOfChunk,
        crossAttnLayers: plan.crossAttentionLayers,
        decoderLayersPath: plan.decoderLayersPath,
        perceiver: o.perceiver,
        crossAttn: o.crossAttentionBlock,
        visionPostLayernorm: o.visionPostLayernorm,
        vocabSize: o.vocabSize,
        strict: o.strict,
        initSeed: o.seed,
      });
    } catch (error) {
      throw fromNative(error);
    }
    return new Flamingo(native, plan, o.tokens.endOfChunk);
  }

  /**
   * One forward pass over interleaved images and text: logits for every position, and the
   * loss when `labels` are given. Runs off the JS thread; calls on one model run in order.
   */
  async forward(input: ForwardInput): Promise<ForwardOutput> {
    const parsed = ForwardInputSchema.safeParse(input);
    if (!parsed.success) throw invalidInput("forward input", parsed.error);
    const i = parsed.data;
    try {
      const out = await this.#native.forward({
        visionX: toFloat32(i.visionX),
        langX: toInt32(i.langX),
        attentionMask: i.attentionMask && toInt32(i.attentionMask),
        labels: i.labels && toInt32(i.labels),
        allowExcessMediaTokens: i.allowExcessMediaTokens,
      });
      return out.loss == null ? { logits: out.logits } : { logits: out.logits, loss: out.loss };
    } catch (error) {
      throw fromNative(error);
    }
  }

  /**
   * The CLIP patch tokens the Perceiver reads, `[batch, images, frames, patches, visionWidth]`
   * (last encoder block, CLS dropped, no post-layernorm unless `visionPostLayernorm`).
   */
  async visionTokens(visionX: FloatTensorInput): Promise<FloatTensor> {
    const x = parseVisionX(visionX);
    try {
      return await this.#native.visionTokens(x);
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** Vision tower and Perceiver resampler: `[batch, images, latents, visionWidth]`. */
  async encodeVision(visionX: FloatTensorInput): Promise<FloatTensor> {
    const x = parseVisionX(visionX);
    try {
      return await this.#native.encodeVision(x);
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** What generation and scoring need: the native handle, the stop token, the tokenizer if attached. */
  #generation(): GenerationHost {
    // The tokenizer is attached by `fromPretrained` / `load({ tokenizer })` (seam: any
    // object with encode/decode will do).
    const codec = (this as { tokenizer?: TextCodec }).tokenizer;
    return { native: this.#native as NativeModel & NativeGeneration, endOfChunk: this.#endOfChunk, codec };
  }

  /**
   * Generates text after each prompt, KV-cached, as the reference's `Flamingo.generate` does
   * (greedy by default; beam search with `numBeams`, sampling with `doSample`). Prompts are
   * token ids (`langX`) or, with a tokenizer attached, `text`; a batch is left-padded and each
   * row stops on its own. The work runs off the JS thread a few tokens per call; `signal`
   * cancels it within one token (rejecting with an `AbortError`), and the model stays usable.
   */
  async generate(input: GenerateInput, options?: GenerationOptions): Promise<GenerationResult> {
    return generate(this.#generation(), input, options);
  }

  /**
   * {@link generate}, yielding each token as it is made (`for await (const t of model.stream(…))`);
   * `result` has the whole result once the loop ends. Beam search yields its tokens at the
   * end, when they are final. Leaving the loop early cancels the generation.
   */
  stream(input: GenerateInput, options?: GenerationOptions): GenerationStream {
    return stream(this.#generation(), input, options);
  }

  /**
   * Log-likelihood of each continuation after one shared context (with its images): the
   * context runs once and its KV cache is reused for every continuation, as the reference's
   * cached rank classification does. Continuations attend to the context's last image; the
   * context's padding stays masked. Rank classes by `mean` (the reference) or `sum`.
   */
  async score(input: ScoreInput, options?: ScoreOptions): Promise<ContinuationScore[]> {
    return score(this.#generation(), input, options);
  }

  /** Sizes and the layer plan. */
  summary(): ModelSummary {
    return this.#native.summary() as ModelSummary;
  }

  /** What loading found in the checkpoint (LM overrides, ignored and unexpected keys). */
  report(): LoadReport {
    return this.#native.report() as LoadReport;
  }

  /** Whether {@link dispose} has been called. */
  get disposed(): boolean {
    return this.#native.disposed;
  }

  /**
   * Frees the model's memory once the calls already made have finished. Later calls reject
   * with `ERR_DISPOSED`; calling it again does nothing.
   */
  async dispose(): Promise<void> {
    try {
      await this.#native.dispose();
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** `await using model = await Flamingo.load(...)` disposes the model at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
