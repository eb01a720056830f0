/**
 * Random models in HF format: a CLIP vision tower (`CLIPVisionModel`) and an OPT causal LM
 * (`OPTForCausalLM`), each a `config.json` + `model.safetensors`, with HF's initialisation
 * scale (weights ~ N(0, 0.02²) in distribution shape, biases 0, layer norms 1/0). For tests
 * that need a model bigger than the golden ones, and for the benchmarks (the reference's
 * `small-cpu` preset). Loaded without a checkpoint, the Flamingo modules are freshly
 * initialised by the engine.
 */

import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";

export interface RandomVision {
  hiddenSize: number;
  intermediateSize: number;
  layers: number;
  heads: number;
  imageSize: number;
  patchSize: number;
}

export interface RandomOpt {
  hiddenSize: number;
  ffnDim: number;
  layers: number;
  heads: number;
  vocabSize: number;
  maxPositions: number;
}

/** The reference benchmark's `small-cpu` preset: ViT-B/16 at 224 and the OPT-125M shape. */
export const SMALL_CPU: { vision: RandomVision; lm: RandomOpt } = {
  vision: { hiddenSize: 768, intermediateSize: 3072, layers: 12, heads: 12, imageSize: 224, patchSize: 16 },
  lm: { hiddenSize: 768, ffnDim: 3072, layers: 12, heads: 12, vocabSize: 50272, maxPositions: 2048 },
};

/** Uniform values with standard deviation `std` from a seeded xorshift (fast enough for 10⁸ values). */
function randomArray(n: number, std: number, state: { s: number }): Float32Array {
  const out = new Float32Array(n);
  const scale = (std * Math.sqrt(3)) / 0x8000_0000; // uniform(−a, a) has std a/√3
  let s = state.s;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (s | 0) * scale;
  }
  state.s = s;
  return out;
}

/** A tensor to write: its shape and how to make its values (made only when written). */
interface Planned {
  shape: number[];
  make: (n: number) => Float32Array;
}

/**
 * Collects tensors, then writes one F32 safetensors file tensor by tensor, so a model of
 * hundreds of megabytes never sits in memory whole.
 */
class TensorWriter {
  readonly #planned = new Map<string, Planned>();
  readonly #state: { s: number };

  constructor(seed: number) {
    this.#state = { s: seed | 0 || 1 };
  }

  random(name: string, shape: number[], std = 0.02): void {
    this.#planned.set(name, { shape, make: (n) => randomArray(n, std, this.#state) });
  }

  fill(name: string, shape: number[], value: number): void {
    this.#planned.set(name, { shape, make: (n) => new Float32Array(n).fill(value) });
  }

  linear(prefix: string, out: number, inp: number): void {
    this.random(`${prefix}.weight`, [out, inp]);
    this.fill(`${prefix}.bias`, [out], 0);
  }

  layerNorm(prefix: string, dim: number): void {
    this.fill(`${prefix}.weight`, [dim], 1);
    this.fill(`${prefix}.bias`, [dim], 0);
  }

  write(path: string): void {
    const header: Record<string, { dtype: "F32"; shape: number[]; data_offsets: [number, number] }> = {};
    let offset = 0;
    for (const [name, t] of this.#planned) {
      const bytes = 4 * t.shape.reduce((a, b) => a * b, 1);
      header[name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + bytes] };
      offset += bytes;
    }
    let json = JSON.stringify(header);
    json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8); // data 8-byte aligned
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    const fd = openSync(path, "w");
    try {
      writeSync(fd, length);
      writeSync(fd, json);
      for (const t of this.#planned.values()) {
        const data = t.make(t.shape.reduce((a, b) => a * b, 1));
        writeSync(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      }
    } finally {
      closeSync(fd);
    }
  }
}

function writeVision(dir: string, v: RandomVision, seed: number): void {
  mkdirSync(dir, { recursive: true });
  const d = v.hiddenSize;
  const grid = v.imageSize / v.patchSize;
  const w = new TensorWriter(seed);
  const p = "vision_model";
  w.random(`${p}.embeddings.class_embedding`, [d]);
  w.random(`${p}.embeddings.patch_embedding.weight`, [d, 3, v.patchSize, v.patchSize]);
  w.random(`${p}.embeddings.position_embedding.weight`, [grid * grid + 1, d]);
  w.layerNorm(`${p}.pre_layrnorm`, d);
  for (let i = 0; i < v.layers; i++) {
    const l = `${p}.encoder.layers.${i}`;
    for (const proj of ["q_proj", "k_proj", "v_proj", "out_proj"]) w.linear(`${l}.self_attn.${proj}`, d, d);
    w.layerNorm(`${l}.layer_norm1`, d);
    w.linear(`${l}.mlp.fc1`, v.intermediateSize, d);
    w.linear(`${l}.mlp.fc2`, d, v.intermediateSize);
    w.layerNorm(`${l}.layer_norm2`, d);
  }
  w.layerNorm(`${p}.post_layernorm`, d);
  w.write(join(dir, "model.safetensors"));
  const config = {
    architectures: ["CLIPVisionModel"],
    model_type: "clip_vision_model",
    hidden_act: "quick_gelu",
    hidden_size: d,
    intermediate_size: v.intermediateSize,
    num_hidden_layers: v.layers,
    num_attention_heads: v.heads,
    image_size: v.imageSize,
    patch_size: v.patchSize,
    num_channels: 3,
    layer_norm_eps: 1e-5,
  };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 1));
}

function writeOpt(dir: string, o: RandomOpt, seed: number): void {
  mkdirSync(dir, { recursive: true });
  const d = o.hiddenSize;
  const w = new TensorWriter(seed);
  const p = "model.decoder";
  w.random(`${p}.embed_tokens.weight`, [o.vocabSize, d]);
  w.random(`${p}.embed_positions.weight`, [o.maxPositions + 2, d]);
  for (let i = 0; i < o.layers; i++) {
    const l = `${p}.layers.${i}`;
    for (const proj of ["q_proj", "k_proj", "v_proj", "out_proj"]) w.linear(`${l}.self_attn.${proj}`, d, d);
    w.layerNorm(`${l}.self_attn_layer_norm`, d);
    w.linear(`${l}.fc1`, o.ffnDim, d);
    w.linear(`${l}.fc2`, d, o.ffnDim);
    w.layerNorm(`${l}.final_layer_norm`, d);
  }
  w.layerNorm(`${p}.final_layer_norm`, d);
  w.write(join(dir, "model.safetensors"));
  const config = {
    architectures: ["OPTForCausalLM"],
    model_type: "opt",
    activation_function: "relu",
    do_layer_norm_before: true,
    enable_bias: true,
    hidden_size: d,
    ffn_dim: o.ffnDim,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    vocab_size: o.vocabSize,
    word_embed_proj_dim: d,
    max_position_embeddings: o.maxPositions,
    tie_word_embeddings: true,
  };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 1));
}

/**
 * Writes `vision/` and `lm/` under `dir` (skipped when both already exist, so a cache
 * folder is written once) and returns their paths.
 */
export function writeRandomModel(
  dir: string,
  spec: { vision: RandomVision; lm: RandomOpt },
  seed = 1,
): { vision: string; lm: string } {
  const vision = join(dir, "vision");
  const lm = join(dir, "lm");
  const done = join(dir, "complete.json");
  const stamp = JSON.stringify({ spec, seed });
  if (!existsSync(done) || readFileSync(done, "utf8") !== stamp) {
    writeVision(vision, spec.vision, seed);
    writeOpt(lm, spec.lm, seed + 1);
    // Written last: a folder interrupted half-way is rewritten next time.
    writeFileSync(done, stamp);
  }
  return { vision, lm };
}
