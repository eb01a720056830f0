/**
 * The golden fixtures: tiny random models and the reference's outputs on them, made by
 * `shared/golden/tools/make_golden.py` with OpenFlamingo 2.0.1 sources, PyTorch 2.11 and
 * transformers 5.17 on CPU in float32 (GOLDEN_SEED=2000; see shared/golden/README.md).
 * They live in `../shared/golden` beside the repository root.
 */

import { cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import type { LoadOptions } from "../../ts/src/index.js";

export const REPO_ROOT = resolve(fileURLToPath(new URL("../..", import.meta.url)));
export const GOLDEN_DIR = resolve(REPO_ROOT, "..", "shared", "golden");

export const FAMILIES = ["llama", "opt", "gpt_neox", "mpt"] as const;
export type Family = (typeof FAMILIES)[number];

/** The parts of `meta.json` the tests use. */
export interface GoldenMeta {
  family: string;
  decoder_layers_attr_name: string;
  cross_attn_every_n_layers: number;
  eoc_token_id: number;
  media_token_id: number;
  pad_token_id: number;
  vis_dim: number;
  checkpoint_keys: string[];
}

export function familyDir(family: Family): string {
  return join(GOLDEN_DIR, family);
}

export function readMeta(family: Family): GoldenMeta {
  return JSON.parse(readFileSync(join(familyDir(family), "meta.json"), "utf8")) as GoldenMeta;
}

/** Load options for a golden family, exactly as a user would write them. */
export function goldenLoadOptions(family: Family, overrides: Partial<LoadOptions> = {}): LoadOptions {
  const meta = readMeta(family);
  const dir = familyDir(family);
  return {
    vision: join(dir, "vision"),
    lm: join(dir, "lm"),
    checkpoint: join(dir, "checkpoint.pt"),
    crossAttention: { everyNLayers: meta.cross_attn_every_n_layers },
    tokens: { media: meta.media_token_id, endOfChunk: meta.eoc_token_id },
    ...overrides,
  };
}

/** Largest absolute difference between two equally long arrays. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs((a[i] as number) - (b[i] as number));
    if (!(d <= max)) max = d; // NaN propagates as a failure
  }
  return max;
}

/** A writable temporary directory, removed by the returned cleanup. */
export function tempDir(prefix: string): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), `flamingo-vlm-${prefix}-`));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** Copies a golden folder (e.g. `llama/lm`) into `dest`, writable. */
export function copyGolden(family: Family, sub: string, dest: string): string {
  const target = join(dest, sub);
  cpSync(join(familyDir(family), sub), target, { recursive: true });
  return target;
}
