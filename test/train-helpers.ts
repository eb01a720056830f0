/**
 * Fixtures of the training tests: a word-level tokenizer whose added tokens get the golden
 * models' ids, PNGs generated here, and JSONL manifests and tar shards over them.
 */

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { deflateSync } from "node:zlib";

import { REPO_ROOT } from "./helpers/golden.js";
import { crc32 } from "./helpers/zip.js";

function newestSource(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestSource(path) : statSync(path).mtimeMs);
  }
  return newest;
}

/**
 * The `train` command as a child process runs it (`dist/train-main.js`, the stand-alone entry of `ts/src/train/main.ts`), built when missing
 * or older than the sources. Returns its path.
 */
export function buildTrainCli(): string {
  const cli = join(REPO_ROOT, "dist", "train-main.js");
  if (!existsSync(cli) || statSync(cli).mtimeMs < newestSource(join(REPO_ROOT, "ts", "src"))) {
    execFileSync("npm", ["run", "--silent", "build:train-cli"], { cwd: REPO_ROOT, stdio: "pipe" });
  }
  return cli;
}

export const WORDS = [
  "a",
  "an",
  "the",
  "red",
  "green",
  "blue",
  "yellow",
  "square",
  "circle",
  "stripe",
  "picture",
  "of",
  "on",
  "white",
  "black",
  ".",
] as const;

/**
 * A WordLevel tokenizer with 93 base tokens (`<unk>` 0, `</s>` 1, {@link WORDS}, fillers),
 * so that OpenFlamingo's added tokens get the golden models' ids: `<|endofchunk|>` 93,
 * `<image>` 94, `<PAD>` 95. Returns the folder.
 */
export function writeTokenizer(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const tokens: string[] = ["<unk>", "</s>", ...WORDS];
  while (tokens.length < 93) tokens.push(`w${tokens.length}`);
  const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]));
  const json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      { id: 1, content: "</s>", single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: { type: "Whitespace" },
    post_processor: null,
    decoder: null,
    model: { type: "WordLevel", vocab, unk_token: "<unk>" },
  };
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(json));
  writeFileSync(
    join(dir, "tokenizer_config.json"),
    JSON.stringify({ eos_token: "</s>", bos_token: null, pad_token: null }),
  );
  return dir;
}

/** Token id of a word of {@link WORDS} (or `</s>`). */
export function tokenId(word: string): number {
  if (word === "</s>") return 1;
  const i = (WORDS as readonly string[]).indexOf(word);
  if (i < 0) throw new Error(`${word} is not in the test vocabulary`);
  return i + 2;
}

function chunk(type: string, data: Uint8Array): Buffer {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

/** An 8-bit RGB PNG of `width`×`height` whose pixel (x, y) is `pixel(x, y)`. */
export function png(width: number, height: number, pixel: (x: number, y: number) => [number, number, number]): Buffer {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  let o = 0;
  for (let y = 0; y < height; y++) {
    raw[o++] = 0; // filter: none
    for (let x = 0; x < width; x++) {
      const [r, g, b] = pixel(x, y);
      raw[o++] = r;
      raw[o++] = g;
      raw[o++] = b;
    }
  }
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit, RGB, deflate, no filter, no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", new Uint8Array(0)),
  ]);
}

const COLORS: Record<string, [number, number, number]> = {
  red: [220, 30, 30],
  green: [30, 200, 40],
  blue: [30, 40, 220],
  yellow: [230, 220, 30],
};
const SHAPES = ["square", "circle", "stripe"] as const;

/** One generated picture: a coloured shape on white, and the caption that says so. */
export function picture(i: number): { png: Buffer; caption: string } {
  const names = Object.keys(COLORS);
  const color = names[i % names.length] as string;
  const shape = SHAPES[Math.floor(i / names.length) % SHAPES.length] as string;
  const rgb = COLORS[color] as [number, number, number];
  const image = png(40, 32, (x, y) => {
    const inside =
      shape === "square"
        ? x >= 10 && x < 30 && y >= 6 && y < 26
        : shape === "circle"
          ? (x - 20) ** 2 + (y - 16) ** 2 < 100
          : y >= 12 && y < 20;
    return inside ? rgb : [255, 255, 255];
  });
  return { png: image, caption: `a ${color} ${shape} .` };
}

/** Writes `n` pictures and a pairs manifest `pairs.jsonl` over them; returns the manifest. */
export function writePairsManifest(dir: string, n: number, extraLines: string[] = []): string {
  mkdirSync(join(dir, "images"), { recursive: true });
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const p = picture(i);
    writeFileSync(join(dir, "images", `${i}.png`), p.png);
    lines.push(JSON.stringify({ image: `images/${i}.png`, caption: p.caption }));
  }
  const path = join(dir, "pairs.jsonl");
  writeFileSync(path, `${[...lines, ...extraLines].join("\n")}\n`);
  return path;
}

function tarHeader(name: string, size: number): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, "utf8");
  h.write("0000644\0", 100, "ascii");
  h.write("0000000\0", 108, "ascii");
  h.write("0000000\0", 116, "ascii");
  h.write(`${size.toString(8).padStart(11, "0")}\0`, 124, "ascii");
  h.write("14500000000\0", 136, "ascii");
  h.write("        ", 148, "ascii");
  h[156] = "0".charCodeAt(0);
  h.write("ustar\0", 257, "ascii");
  h.write("00", 263, "ascii");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
  return h;
}

/** A ustar archive of `files` (names up to 100 bytes). */
export function tar(files: [name: string, data: Buffer][]): Buffer {
  const parts: Buffer[] = [];
  for (const [name, data] of files) {
    parts.push(tarHeader(name, data.length), data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}
