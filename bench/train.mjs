// Training throughput and peak memory on the `small-cpu` workload of
// ../shared/bench/reference_bench.py, next to the reference (PyTorch eager OpenFlamingo) run
// by the same command on the same machine.
//
// Workload (as the reference script defines it): ViT-B/16 at 224 (12 × 768), an OPT-125M
// shaped LM (12 × 768, vocabulary 50272), a gated cross-attention block before every layer,
// random weights, one step = batch 4 × 1 image × 32 tokens with one <image> at position 0:
// forward, backward, only the <image>/<|endofchunk|> embedding rows learn, clip at 1.0,
// AdamW lr 1e-4 with weight decay 0.1 on the gated cross-attention only.
//
// usage: npm run bench:train [-- --steps N] [-- --skip-reference]
// Internals: `--make DIR` writes the random model, `--run DIR` times our step in a fresh
// process (so its peak RSS is the training's own), `--profile DIR` times the parts.

import { spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { dirname, join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const SCRIPT = fileURLToPath(import.meta.url);
const REFERENCE = join(ROOT, "..", "shared", "bench", "reference_bench.py");
const PYTHON = process.env.FLAMINGO_REF_PYTHON ?? "/work/venv-ref/bin/python";
const WORK = join(ROOT, ".tmp", "bench-train");

const VIT_B16 = { hidden: 768, intermediate: 3072, layers: 12, heads: 12, image: 224, patch: 16 };
const OPT_125M = { hidden: 768, ffn: 3072, layers: 12, heads: 12, vocab: 50272, maxPositions: 2048 };
// Our tokenizer: 50000 words, then OpenFlamingo's added tokens.
const BASE_VOCAB = 50000;
const EOC = BASE_VOCAB;
const MEDIA = BASE_VOCAB + 1;
const BATCH = 4;
const TOKENS = 32;

// ---------------------------------------------------------------------------------------
// The random model (written once, cached in .tmp/bench-train)
// ---------------------------------------------------------------------------------------

function writeSafetensors(path, tensors, fill) {
  const header = {};
  let offset = 0;
  for (const [name, shape] of tensors) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 4;
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const fd = openSync(path, "w");
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeSync(fd, length);
  writeSync(fd, json);
  let state = 12345;
  for (const [name, shape] of tensors) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    fill(name, data, () => {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      return (state / 2 ** 32 - 0.5) * 0.04; // uniform ±0.02, like HF's init scale
    });
    writeSync(fd, new Uint8Array(data.buffer));
  }
  closeSync(fd);
}

function fillParameter(name, data, random) {
  if (/norm|layrnorm/.test(name) && name.endsWith(".weight")) data.fill(1);
  else if (name.endsWith(".bias")) data.fill(0);
  else for (let i = 0; i < data.length; i++) data[i] = random();
}

function makeModel(dir) {
  const v = VIT_B16;
  mkdirSync(join(dir, "vision"), { recursive: true });
  writeFileSync(
    join(dir, "vision", "config.json"),
    JSON.stringify({
      architectures: ["CLIPVisionModel"],
      model_type: "clip_vision_model",
      hidden_size: v.hidden,
      intermediate_size: v.intermediate,
      num_hidden_layers: v.layers,
      num_attention_heads: v.heads,
      image_size: v.image,
      patch_size: v.patch,
      hidden_act: "quick_gelu",
      layer_norm_eps: 1e-5,
      num_channels: 3,
    }),
  );
  const patches = (v.image / v.patch) ** 2 + 1;
  const vt = [
    ["vision_model.embeddings.class_embedding", [v.hidden]],
    ["vision_model.embeddings.patch_embedding.weight", [v.hidden, 3, v.patch, v.patch]],
    ["vision_model.embeddings.position_embedding.weight", [patches, v.hidden]],
    ["vision_model.pre_layrnorm.weight", [v.hidden]],
    ["vision_model.pre_layrnorm.bias", [v.hidden]],
  ];
  for (let i = 0; i < v.layers; i++) {
    const p = `vision_model.encoder.layers.${i}`;
    for (const n of ["q_proj", "k_proj", "v_proj", "out_proj"]) {
      vt.push([`${p}.self_attn.${n}.weight`, [v.hidden, v.hidden]], [`${p}.self_attn.${n}.bias`, [v.hidden]]);
    }
    for (const n of ["layer_norm1", "layer_norm2"])
      vt.push([`${p}.${n}.weight`, [v.hidden]], [`${p}.${n}.bias`, [v.hidden]]);
    vt.push(
      [`${p}.mlp.fc1.weight`, [v.intermediate, v.hidden]],
      [`${p}.mlp.fc1.bias`, [v.intermediate]],
      [`${p}.mlp.fc2.weight`, [v.hidden, v.intermediate]],
      [`${p}.mlp.fc2.bias`, [v.hidden]],
    );
  }
  vt.push(["vision_model.post_layernorm.weight", [v.hidden]], ["vision_model.post_layernorm.bias", [v.hidden]]);
  writeSafetensors(join(dir, "vision", "model.safetensors"), vt, fillParameter);

  const l = OPT_125M;
  mkdirSync(join(dir, "lm"), { recursive: true });
  writeFileSync(
    join(dir, "lm", "config.json"),
    JSON.stringify({
      architectures: ["OPTForCausalLM"],
      model_type: "opt",
      activation_function: "relu",
      hidden_size: l.hidden,
      ffn_dim: l.ffn,
      num_hidden_layers: l.layers,
      num_attention_heads: l.heads,
      vocab_size: l.vocab,
      word_embed_proj_dim: l.hidden,
      max_position_embeddings: l.maxPositions,
      do_layer_norm_before: true,
      enable_bias: true,
      layer_norm_elementwise_affine: true,
      tie_word_embeddings: true,
      pad_token_id: 1,
      bos_token_id: 2,
      eos_token_id: 2,
    }),
  );
  const lt = [
    ["model.decoder.embed_tokens.weight", [l.vocab, l.hidden]],
    ["model.decoder.embed_positions.weight", [l.maxPositions + 2, l.hidden]],
  ];
  for (let i = 0; i < l.layers; i++) {
    const p = `model.decoder.layers.${i}`;
    for (const n of ["q_proj", "k_proj", "v_proj", "out_proj"]) {
      lt.push([`${p}.self_attn.${n}.weight`, [l.hidden, l.hidden]], [`${p}.self_attn.${n}.bias`, [l.hidden]]);
    }
    for (const n of ["self_attn_layer_norm", "final_layer_norm"])
      lt.push([`${p}.${n}.weight`, [l.hidden]], [`${p}.${n}.bias`, [l.hidden]]);
    lt.push(
      [`${p}.fc1.weight`, [l.ffn, l.hidden]],
      [`${p}.fc1.bias`, [l.ffn]],
      [`${p}.fc2.weight`, [l.hidden, l.ffn]],
      [`${p}.fc2.bias`, [l.hidden]],
    );
  }
  lt.push(["model.decoder.final_layer_norm.weight", [l.hidden]], ["model.decoder.final_layer_norm.bias", [l.hidden]]);
  writeSafetensors(join(dir, "lm", "model.safetensors"), lt, fillParameter);

  // A word-level tokenizer: `w0` … `w49998` and `</s>`; <|endofchunk|> and <image> follow.
  const vocab = { "</s>": 0 };
  for (let i = 1; i < BASE_VOCAB; i++) vocab[`w${i}`] = i;
  mkdirSync(join(dir, "tokenizer"), { recursive: true });
  writeFileSync(
    join(dir, "tokenizer", "tokenizer.json"),
    JSON.stringify({
      version: "1.0",
      truncation: null,
      padding: null,
      added_tokens: [
        { id: 0, content: "</s>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      ],
      normalizer: null,
      pre_tokenizer: { type: "Whitespace" },
      post_processor: null,
      decoder: null,
      model: { type: "WordLevel", vocab, unk_token: "</s>" },
    }),
  );
  writeFileSync(
    join(dir, "tokenizer", "tokenizer_config.json"),
    JSON.stringify({ eos_token: "</s>", pad_token: null }),
  );

  // Four random 224×224 pictures and their captions (31 random words: with <image> the
  // rows are cut at 32 tokens, so every row has exactly 32, as in the reference).
  mkdirSync(join(dir, "data"), { recursive: true });
  let s = 7;
  const rnd = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s;
  };
  const lines = [];
  for (let i = 0; i < BATCH; i++) {
    writeFileSync(join(dir, "data", `${i}.png`), noisePng(224, 224, rnd));
    const words = Array.from({ length: 40 }, () => `w${1 + (rnd() % (BASE_VOCAB - 1))}`);
    lines.push(JSON.stringify({ image: `${i}.png`, caption: words.join(" ") }));
  }
  writeFileSync(join(dir, "data", "pairs.jsonl"), `${lines.join("\n")}\n`);
  writeFileSync(join(dir, "done"), "");
}

const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}
function noisePng(w, h, rnd) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w * 3; x++) raw[y * (w * 3 + 1) + 1 + x] = rnd() >>> 24;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", ihdr),
    pngChunk("IDAT", deflateSync(raw)),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

// ---------------------------------------------------------------------------------------
// Our side
// ---------------------------------------------------------------------------------------

function loadOptions(dir) {
  return {
    vision: join(dir, "vision"),
    lm: join(dir, "lm"),
    crossAttention: { everyNLayers: 1 },
    tokens: { media: MEDIA, endOfChunk: EOC },
  };
}

async function firstBatch(api, dir) {
  const loader = api.dataLoader({
    kind: "pairs",
    manifest: join(dir, "data", "pairs.jsonl"),
    tokenizer: join(dir, "tokenizer"),
    imageSize: VIT_B16.image,
    batchSize: BATCH,
    flipProbability: 0,
  });
  const batch = await loader.next();
  await loader.close();
  if (batch === undefined || batch.size !== BATCH || batch.seqLen !== TOKENS) {
    throw new Error(`expected a ${BATCH}×${TOKENS} batch, got ${batch?.size}×${batch?.seqLen}`);
  }
  return batch;
}

async function runOurs(dir, steps) {
  const api = await import(join(ROOT, "dist", "index.js"));
  const t0 = performance.now();
  const trainer = await api.Trainer.create(loadOptions(dir), { lr: 1e-4, weightDecay: 0.1, clipGradNorm: 1 });
  const loadSeconds = (performance.now() - t0) / 1000;
  const batch = await firstBatch(api, dir);
  const times = [];
  let loss;
  for (let i = 0; i <= steps; i++) {
    const t = performance.now();
    const r = await trainer.step(batch);
    if (i > 0) times.push((performance.now() - t) / 1000); // step 0 warms up, as the reference's
    loss = r.loss;
  }
  await trainer.dispose();
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  return {
    samplesPerSecond: BATCH / mean,
    stepSeconds: times,
    loss,
    loadSeconds,
    peakRssGiB: process.resourceUsage().maxRSS / 2 ** 20,
    parameterCount: trainer.parameterCount,
  };
}

async function profileOurs(dir) {
  const api = await import(join(ROOT, "dist", "index.js"));
  const model = await api.Flamingo.load(loadOptions(dir));
  const batch = await firstBatch(api, dir);
  const visionX = batch.visionX();
  const input = { visionX, langX: batch.inputIds(), attentionMask: batch.attentionMask(), labels: batch.labels() };
  const time = async (fn, n = 2) => {
    await fn();
    const t = performance.now();
    for (let i = 0; i < n; i++) await fn();
    return (performance.now() - t) / 1000 / n;
  };
  const out = {
    visionTowerSeconds: await time(() => model.visionTokens(visionX)),
    encodeVisionSeconds: await time(() => model.encodeVision(visionX)),
    forwardSeconds: await time(() => model.forward(input)),
  };
  await model.dispose();
  return out;
}

function child(mode, dir, extra = []) {
  const r = spawnSync(process.execPath, [SCRIPT, mode, dir, ...extra], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
    maxBuffer: 1 << 24,
  });
  if (r.status !== 0) throw new Error(`${mode} failed with status ${r.status}`);
  return JSON.parse(r.stdout.trim().split("\n").pop());
}

// reference_bench.py has no switch for its training part alone, and its peak RSS covers
// its whole run (inference too). Its own `training()` is called by itself instead, in a
// fresh Python process, so that both peak figures are a training run's alone.
const REFERENCE_TRAINING_ONLY = `
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import reference_bench as rb
r = {}
rb.training(rb.PRESETS["small-cpu"], r, time.time() + float(sys.argv[2]))
r["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
r["torch"] = rb.torch.__version__
r["threads"] = rb.torch.get_num_threads()
print(json.dumps(r))
`;

function reference() {
  const t = performance.now();
  const r = spawnSync(PYTHON, ["-c", REFERENCE_TRAINING_ONLY, dirname(REFERENCE), "600"], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    maxBuffer: 1 << 24,
  });
  const last = (r.stdout ?? "").trim().split("\n").pop() ?? "";
  if (r.status !== 0 || !last.startsWith("{")) {
    return { error: `${PYTHON} (training() of ${REFERENCE}) exited with ${r.status}: ${(r.stderr ?? "").slice(-2000)}` };
  }
  return { ...JSON.parse(last), wallSeconds: (performance.now() - t) / 1000 };
}

// ---------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------

const [mode, arg] = process.argv.slice(2);
if (mode === "--make") {
  makeModel(arg);
} else if (mode === "--run") {
  const steps = Number(process.argv[4] ?? 3);
  console.log(JSON.stringify(await runOurs(arg, steps)));
} else if (mode === "--profile") {
  console.log(JSON.stringify(await profileOurs(arg)));
} else {
  const args = process.argv.slice(2);
  const steps = args.includes("--steps") ? Number(args[args.indexOf("--steps") + 1]) : 3;
  const modelDir = join(WORK, "model");
  if (!existsSync(join(modelDir, "done"))) {
    console.error(`writing the random small-cpu model to ${modelDir} (once)…`);
    const r = spawnSync(process.execPath, [SCRIPT, "--make", modelDir], { stdio: "inherit" });
    if (r.status !== 0) process.exit(1);
  }
  const machine = `${cpus().length} × ${cpus()[0]?.model.trim()}, load average ${loadavg()
    .map((x) => x.toFixed(1))
    .join(" ")}`;
  console.error(`machine: ${machine}`);
  console.error("ours: training steps…");
  const ours = child("--run", modelDir, [String(steps)]);
  console.error("ours: profile (vision tower, encode, forward)…");
  const profile = child("--profile", modelDir);
  let ref = { skipped: true };
  if (!args.includes("--skip-reference")) {
    console.error(`reference: ${PYTHON}, training() of reference_bench.py, preset small-cpu…`);
    ref = reference();
  }
  const refSps = ref.train_laion_b4_img1_tok32_samples_per_s;
  const rows = [
    ["train samples/s (b4 × 1 image × 32 tokens)", ours.samplesPerSecond, refSps],
    ["train step, s", 1 / (ours.samplesPerSecond / BATCH), refSps ? BATCH / refSps : undefined],
    ["peak RSS, GiB", ours.peakRssGiB, ref.peak_rss_gib],
  ];
  const fmt = (x) => (typeof x === "number" ? x.toFixed(3) : "—");
  console.log(`\nsmall-cpu training (${machine}; both sides ran in this command, one after the other)`);
  console.log("| figure | flamingo-vlm | reference | ratio |");
  console.log("|---|---|---|---|");
  for (const [name, a, b] of rows) {
    console.log(
      `| ${name} | ${fmt(a)} | ${fmt(b)} | ${typeof a === "number" && typeof b === "number" ? (a / b).toFixed(2) : "—"} |`,
    );
  }
  console.log(
    `\nours: step times ${ours.stepSeconds.map((s) => s.toFixed(2)).join(", ")} s after 1 warm-up; model load ${ours.loadSeconds.toFixed(1)} s; ` +
      `${ours.parameterCount} trainable parameters; loss ${ours.loss.toFixed(4)}`,
  );
  console.log(
    `ours, profile (inference, b4): vision tower ${profile.visionTowerSeconds.toFixed(2)} s, vision tower + perceiver ` +
      `${profile.encodeVisionSeconds.toFixed(2)} s, whole forward ${profile.forwardSeconds.toFixed(2)} s`,
  );
  if (ref.error) console.log(`reference: ${ref.error}`);
  else if (!ref.skipped) {
    console.log(
      `reference: torch ${ref.torch}, ${ref.threads} threads, mean of 2 steps after 1 warm-up; peak RSS of its training run alone; ` +
        `wall ${ref.wallSeconds.toFixed(0)} s`,
    );
  }
  writeFileSync(join(WORK, "result.json"), JSON.stringify({ machine, ours, profile, reference: ref }, null, 1));
}
