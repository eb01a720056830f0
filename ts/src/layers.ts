/**
 * The layer plan: where the LM's decoder layers live and which of them get a gated
 * cross-attention block. Decided here, from the LM's `config.json`, exactly as OpenFlamingo's
 * factory does (spec §2.4, §2.5); the engine only builds what it is told.
 */

import { readFile } from "node:fs/promises";
import { join } from "node:path";

import { ErrorCode, FlamingoError } from "./errors.js";
import type { CrossAttentionPlan } from "./options.js";

/**
 * The reference's `_infer_decoder_layers_attr_name` table, in its dict order: the first key
 * contained in the lower-cased class name wins (so "opt" is tried before everything else).
 */
const DECODER_LAYERS_BY_CLASS: ReadonlyArray<readonly [key: string, path: string]> = [
  ["opt", "model.decoder.layers"],
  ["gptj", "transformer.h"],
  ["gpt-j", "transformer.h"],
  ["pythia", "gpt_neox.layers"],
  ["llama", "model.layers"],
  ["gptneoxforcausallm", "gpt_neox.layers"],
  ["mpt", "transformer.blocks"],
  ["mosaicgpt", "transformer.blocks"],
];

/** The parts of an HF `config.json` the plan depends on. */
export interface LmConfigJson {
  architectures?: string[];
  num_hidden_layers?: number;
  n_layers?: number;
  num_layers?: number;
  [key: string]: unknown;
}

/** What the plan resolved to. */
export interface LayerPlan {
  /** Attribute path of the decoder layers, e.g. `model.layers`. */
  decoderLayersPath: string;
  /** Decoder layers in the LM. */
  numLayers: number;
  /** LM layer indices with a cross-attention block before them, ascending. */
  crossAttentionLayers: number[];
}

/**
 * The decoder-layers path for an LM class name (`architectures[0]`), as the reference infers
 * it. Throws `ERR_UNSUPPORTED_MODEL` when no known key matches.
 */
export function inferDecoderLayersPath(className: string): string {
  const name = className.toLowerCase();
  for (const [key, path] of DECODER_LAYERS_BY_CLASS) {
    if (name.includes(key)) return path;
  }
  throw new FlamingoError(
    ErrorCode.UnsupportedModel,
    `cannot tell where the decoder layers of a "${className}" live: known LM classes contain one of ` +
      `${DECODER_LAYERS_BY_CLASS.map(([k]) => `"${k}"`).join(", ")}; pass decoderLayersPath (e.g. "model.layers") to name them`,
  );
}

/** Number of decoder layers, under whichever name the config uses. */
export function numDecoderLayers(config: LmConfigJson, configPath = "config.json"): number {
  const n = config.num_hidden_layers ?? config.n_layers ?? config.num_layers;
  if (typeof n !== "number" || !Number.isInteger(n) || n <= 0) {
    throw new FlamingoError(
      ErrorCode.Config,
      `invalid config ${configPath}: no layer count (expected a positive integer in num_hidden_layers, n_layers or num_layers)`,
    );
  }
  return n;
}

/**
 * LM layers that get a cross-attention block: `(i + 1) % n === 0` for `everyNLayers: n`, or
 * the explicit list (checked against the layer count, sorted).
 */
export function crossAttentionLayers(plan: CrossAttentionPlan, numLayers: number): number[] {
  if ("everyNLayers" in plan) {
    const n = plan.everyNLayers;
    return Array.from({ length: numLayers }, (_, i) => i).filter((i) => (i + 1) % n === 0);
  }
  const layers = [...plan.layers].sort((a, b) => a - b);
  for (let k = 0; k < layers.length; k++) {
    const i = layers[k] as number;
    if (i >= numLayers) {
      throw new FlamingoError(
        ErrorCode.InvalidInput,
        `crossAttention.layers: layer ${i} does not exist; the LM has ${numLayers} decoder layers (0..${numLayers - 1})`,
      );
    }
    if (k > 0 && layers[k - 1] === i) {
      throw new FlamingoError(ErrorCode.InvalidInput, `crossAttention.layers: layer ${i} is listed twice`);
    }
  }
  return layers;
}

/** Reads `<lmDir>/config.json`. */
export async function readLmConfig(lmDir: string): Promise<{ path: string; config: LmConfigJson }> {
  const path = join(lmDir, "config.json");
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (cause) {
    throw new FlamingoError(ErrorCode.Io, `${path}: ${(cause as Error).message}`, { cause });
  }
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (cause) {
    throw new FlamingoError(ErrorCode.Config, `invalid config ${path}: not valid JSON (${(cause as Error).message})`, {
      cause,
    });
  }
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    throw new FlamingoError(ErrorCode.Config, `invalid config ${path}: expected a JSON object`);
  }
  return { path, config: config as LmConfigJson };
}

/**
 * The full plan for the LM in `lmDir`. `decoderLayersPath` overrides the inference (the
 * engine still checks it against the LM it loads).
 */
export async function planLayers(
  lmDir: string,
  plan: CrossAttentionPlan,
  decoderLayersPath?: string,
): Promise<LayerPlan> {
  const { path, config } = await readLmConfig(lmDir);
  let layersPath = decoderLayersPath;
  if (layersPath === undefined) {
    const className = config.architectures?.[0];
    if (typeof className !== "string") {
      throw new FlamingoError(
        ErrorCode.Config,
        `invalid config ${path}: no "architectures" entry to infer the decoder layers from; pass decoderLayersPath`,
      );
    }
    layersPath = inferDecoderLayersPath(className);
  }
  const numLayers = numDecoderLayers(config, path);
  return {
    decoderLayersPath: layersPath,
    numLayers,
    crossAttentionLayers: crossAttentionLayers(plan, numLayers),
  };
}
