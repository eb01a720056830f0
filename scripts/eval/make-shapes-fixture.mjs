// Writes test/fixtures/eval-shapes/: a small COCO-format (Karpathy split) caption set of shape
// scenes ("two red circles"), 8 train and 4 test images of 64×64 pixels, for the evaluation
// runner's end-to-end test. Deterministic: rerunning it rewrites the same bytes.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";

const out = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "test", "fixtures", "eval-shapes");
const SIZE = 64;
const COLORS = { red: [220, 40, 40], green: [40, 170, 60], blue: [40, 80, 220], yellow: [230, 200, 30] };
const NUMBERS = ["", "one", "two", "three"];

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type, data) {
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}
function png(pixels) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(SIZE, 0);
  header.writeUInt32BE(SIZE, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const raw = Buffer.alloc(SIZE * (1 + 3 * SIZE));
  for (let y = 0; y < SIZE; y++) {
    raw[y * (1 + 3 * SIZE)] = 0; // filter: none
    pixels.copy(raw, y * (1 + 3 * SIZE) + 1, y * 3 * SIZE, (y + 1) * 3 * SIZE);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(raw, { level: 9 })),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}
function inside(shape, x, y, cx, cy, r) {
  if (shape === "circle") return (x - cx) ** 2 + (y - cy) ** 2 <= r * r;
  if (shape === "square") return Math.abs(x - cx) <= r && Math.abs(y - cy) <= r;
  // triangle pointing up
  return y <= cy + r && y >= cy - r && Math.abs(x - cx) <= (y - (cy - r)) / 2;
}
function scene(shape, color, count) {
  const pixels = Buffer.alloc(SIZE * SIZE * 3, 255);
  const r = 9;
  const centres = [
    [[32, 32]],
    [
      [18, 32],
      [46, 32],
    ],
    [
      [18, 20],
      [46, 20],
      [32, 46],
    ],
  ][count - 1];
  for (let y = 0; y < SIZE; y++) {
    for (let x = 0; x < SIZE; x++) {
      if (centres.some(([cx, cy]) => inside(shape, x, y, cx, cy, r))) pixels.set(COLORS[color], 3 * (y * SIZE + x));
    }
  }
  return png(pixels);
}

const scenes = [
  ["circle", "red", 2, "train"],
  ["square", "blue", 1, "train"],
  ["triangle", "green", 3, "train"],
  ["circle", "yellow", 1, "train"],
  ["square", "red", 3, "train"],
  ["triangle", "blue", 2, "train"],
  ["circle", "green", 3, "train"],
  ["square", "yellow", 2, "train"],
  ["circle", "blue", 2, "test"],
  ["square", "green", 1, "test"],
  ["triangle", "red", 1, "test"],
  ["circle", "red", 3, "test"],
];
mkdirSync(join(out, "images"), { recursive: true });
const images = scenes.map(([shape, color, count, split], i) => {
  const filename = `shapes_${String(i + 1).padStart(2, "0")}.png`;
  writeFileSync(join(out, "images", filename), scene(shape, color, count));
  const noun = count === 1 ? shape : `${shape}s`;
  const phrase = `${NUMBERS[count]} ${color} ${noun}`;
  return {
    filepath: "images",
    filename,
    cocoid: 1000 + i,
    split,
    sentences: [{ raw: phrase }, { raw: `A picture of ${phrase}.` }, { raw: `${phrase} on a white background` }],
  };
});
writeFileSync(join(out, "dataset_coco.json"), `${JSON.stringify({ images, dataset: "coco" }, null, 2)}\n`);
console.log(`wrote ${images.length} images and dataset_coco.json to ${out}`);
