/**
 * Images through the public API: files, bytes and raw pixels in, the reference's CLIP eval
 * transform out; batches laid out as `visionX`; and every way an image can be refused, each
 * with its code. The broken files are written here, a few bytes each.
 *
 * Parity provenance: `shared/golden/preprocess/` (open_flamingo 2.0.1's transform on PIL
 * images, PyTorch 2.11, CPU float32; see shared/golden/README.md).
 */

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { crc32, deflateSync } from "node:zlib";
import { afterAll, describe, expect, it } from "vitest";

import { FlamingoError, ImageErrorCode, loadImage, preprocessImages } from "../ts/src/index.js";
import { GOLDEN_DIR, maxAbsDiff, tempDir } from "./helpers/golden.js";
import { f32, readSafetensors } from "./helpers/safetensors.js";

const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD = [0.26862954, 0.26130258, 0.27577711];

/** What the transform gives a pixel value `v` of channel `c`, computed in f32 as torch does. */
function normalized(v: number, c: number): number {
  const f = Math.fround;
  return f(f(f(v / 255) - f(CLIP_MEAN[c] as number)) / f(CLIP_STD[c] as number));
}

function chunk(type: string, data: Uint8Array): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, "ascii");
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
  return Buffer.concat([head, data, crc]);
}

/** An 8-bit RGB PNG; `rows` holds `height` rows of `width * 3` bytes. */
function png(width: number, height: number, rgb: (x: number, y: number) => [number, number, number]): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const raw = Buffer.alloc(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    raw[y * (1 + width * 3)] = 0; // filter: none
    for (let x = 0; x < width; x++) raw.set(rgb(x, y), y * (1 + width * 3) + 1 + x * 3);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", new Uint8Array()),
  ]);
}

/** A valid PNG whose header claims `width`×`height` but whose data is one tiny row. */
function pngClaiming(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(Buffer.alloc(4))),
    chunk("IEND", new Uint8Array()),
  ]);
}

/** A 24-bit BMP (bottom-up rows of B, G, R, each row padded to 4 bytes), as Windows writes it. */
function bmp(width: number, height: number, rgb: (x: number, y: number) => [number, number, number]): Buffer {
  const stride = Math.ceil((width * 3) / 4) * 4;
  const file = Buffer.alloc(54 + stride * height);
  file.write("BM", 0, "ascii");
  file.writeUInt32LE(file.length, 2);
  file.writeUInt32LE(54, 10);
  file.writeUInt32LE(40, 14);
  file.writeInt32LE(width, 18);
  file.writeInt32LE(height, 22);
  file.writeUInt16LE(1, 26);
  file.writeUInt16LE(24, 28);
  file.writeUInt32LE(stride * height, 34);
  for (let y = 0; y < height; y++) {
    const row = 54 + (height - 1 - y) * stride;
    for (let x = 0; x < width; x++) {
      const [r, g, b] = rgb(x, y);
      file.set([b, g, r], row + x * 3);
    }
  }
  return file;
}

/**
 * A lossless WebP (VP8L) whose pixels are `(red, greens[bit], blue)`, `bit` chosen per pixel.
 * Its prefix codes are "simple" ones: red, blue, alpha and distance have one symbol (read
 * with zero bits), green two of length 1 (code 0 → the smaller value), so the pixel data is
 * one bit per pixel. Written from the VP8L specification, with no encoder involved.
 */
function webpLossless(
  width: number,
  height: number,
  colours: { red: number; greens: [number, number]; blue: number },
  bit: (x: number, y: number) => 0 | 1,
): Buffer {
  const bits: number[] = [];
  const put = (value: number, n: number) => {
    for (let i = 0; i < n; i++) bits.push((value >> i) & 1);
  };
  const oneSymbol = (symbol: number) => {
    put(1, 1); // simple code
    put(0, 1); // one symbol
    put(1, 1); // an 8-bit symbol
    put(symbol, 8);
  };
  const [g0, g1] = colours.greens;
  put(0x2f, 8); // signature
  put(width - 1, 14);
  put(height - 1, 14);
  put(0, 1); // alpha not used
  put(0, 3); // version
  put(0, 1); // no transform
  put(0, 1); // no colour cache
  put(0, 1); // no meta prefix codes
  // green: two symbols, the first 8-bit
  put(1, 1);
  put(1, 1);
  put(1, 1);
  put(Math.min(g0, g1), 8);
  put(Math.max(g0, g1), 8);
  oneSymbol(colours.red);
  oneSymbol(colours.blue);
  oneSymbol(255); // alpha
  put(1, 1); // distance: simple, one 1-bit symbol 0
  put(0, 1);
  put(0, 1);
  put(0, 1);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const green = colours.greens[bit(x, y)] as number;
      put(green === Math.min(g0, g1) ? 0 : 1, 1);
    }
  }
  const data = Buffer.alloc(Math.ceil(bits.length / 8));
  bits.forEach((b, i) => {
    data[i >> 3] = (data[i >> 3] as number) | (b << (i & 7));
  });
  const padded = data.length % 2 === 1 ? Buffer.concat([data, Buffer.alloc(1)]) : data;
  const head = Buffer.alloc(20);
  head.write("RIFF", 0, "ascii");
  head.writeUInt32LE(12 + padded.length, 4);
  head.write("WEBPVP8L", 8, "ascii");
  head.writeUInt32LE(data.length, 16);
  return Buffer.concat([head, padded]);
}

/** Largest and mean absolute difference. */
function diffs(a: Float32Array, b: Float32Array): { max: number; mean: number } {
  let max = 0;
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs((a[i] as number) - (b[i] as number));
    max = Math.max(max, d);
    sum += d;
  }
  return { max, mean: sum / a.length };
}

async function codeOf(promise: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(FlamingoError);
    const e = error as FlamingoError;
    return { code: e.code, message: e.message };
  }
  throw new Error("expected the promise to reject");
}

const tmp = tempDir("flamingo-images-");
afterAll(() => tmp.cleanup());

describe("loadImage", () => {
  it("matches the reference transform on the four golden PNGs (issue bar: max 0.02, mean 0.002)", async () => {
    const expected = readSafetensors(join(GOLDEN_DIR, "preprocess", "expected.safetensors"));
    for (const name of ["wide", "tall", "small_gray", "rgba"]) {
      const got = await loadImage(join(GOLDEN_DIR, "preprocess", `${name}.png`), { applyExifOrientation: false });
      const want = f32(expected, name);
      expect(got.shape).toEqual([3, 224, 224]);
      const { max, mean } = diffs(got.data, want.data);
      console.log(`preprocess parity ${name}: max abs ${max.toExponential(2)}, mean abs ${mean.toExponential(2)}`);
      expect(max, name).toBeLessThanOrEqual(0.02);
      expect(mean, name).toBeLessThanOrEqual(0.002);
      // What the port reaches: Pillow's fixed-point passes reproduced, so f32 rounding only.
      expect(max, name).toBeLessThanOrEqual(1e-6);
    }
  });

  it("gives the same tensor from a path, a Buffer and a Uint8Array", async () => {
    const path = join(GOLDEN_DIR, "preprocess", "wide.png");
    const fromPath = await loadImage(path);
    const bytes = (await import("node:fs")).readFileSync(path);
    const fromBuffer = await loadImage(bytes);
    const fromArray = await loadImage(new Uint8Array(bytes));
    expect(maxAbsDiff(fromPath.data, fromBuffer.data)).toBe(0);
    expect(maxAbsDiff(fromPath.data, fromArray.data)).toBe(0);
  });

  it("turns a solid colour into the CLIP-normalised constant of each channel", async () => {
    const file = join(tmp.path, "orange.png");
    writeFileSync(
      file,
      png(40, 30, () => [250, 128, 7]),
    );
    const got = await loadImage(file, { size: 16 });
    expect(got.shape).toEqual([3, 16, 16]);
    [250, 128, 7].forEach((v, c) => {
      const plane = got.data.subarray(c * 256, (c + 1) * 256);
      for (const x of plane) expect(x).toBeCloseTo(normalized(v, c), 6);
    });
  });

  it("takes raw RGB pixels: a left-black, right-white image keeps its halves after the centre crop", async () => {
    const width = 8;
    const height = 4;
    const data = new Uint8Array(width * height * 3);
    for (let y = 0; y < height; y++)
      for (let x = 4; x < width; x++) data.fill(255, (y * width + x) * 3, (y * width + x + 1) * 3);
    // Short side 4 is already `size`: no resize; the centre crop keeps x = 2..5.
    const got = await loadImage({ data, width, height, channels: 3 }, { size: 4 });
    expect(got.shape).toEqual([3, 4, 4]);
    const row = Array.from(got.data.subarray(0, 4));
    expect(row).toEqual([normalized(0, 0), normalized(0, 0), normalized(255, 0), normalized(255, 0)]);
  });

  it("decodes a BMP to the same pixels as the PNG of the same image", async () => {
    const colour = (x: number, y: number): [number, number, number] => [(x * 37) % 256, (y * 53) % 256, (x * y) % 256];
    const fromBmp = await loadImage(bmp(30, 22, colour), { size: 16 });
    const fromPng = await loadImage(png(30, 22, colour), { size: 16 });
    expect(fromBmp.shape).toEqual([3, 16, 16]);
    expect(maxAbsDiff(fromBmp.data, fromPng.data)).toBe(0);
  });

  it("decodes a lossless WebP to the same pixels as the PNG of the same image", async () => {
    const colours = { red: 200, greens: [16, 240] as [number, number], blue: 30 };
    const right = (x: number) => (x >= 4 ? 1 : 0) as 0 | 1;
    const webp = webpLossless(8, 4, colours, right);
    // Short side 4 is `size`: no resize, the centre crop keeps x = 2..5.
    const got = await loadImage(webp, { size: 4 });
    const fromPng = await loadImage(
      png(8, 4, (x) => [colours.red, colours.greens[right(x)] as number, colours.blue]),
      { size: 4 },
    );
    expect(maxAbsDiff(got.data, fromPng.data)).toBe(0);
    const greenRow = Array.from(got.data.subarray(16, 20));
    expect(greenRow).toEqual([normalized(16, 1), normalized(16, 1), normalized(240, 1), normalized(240, 1)]);
    expect(got.data[0]).toBe(normalized(200, 0));
    expect(got.data[32]).toBe(normalized(30, 2));
  });

  it("uses the given mean and std", async () => {
    const data = new Uint8Array(2 * 2 * 3).fill(51); // 51 / 255 = 0.2
    const got = await loadImage(
      { data, width: 2, height: 2, channels: 3 },
      { size: 2, mean: [0, 0.1, 0.2], std: [1, 0.5, 0.25] },
    );
    expect(got.data[0]).toBeCloseTo(0.2, 6);
    expect(got.data[4]).toBeCloseTo(0.2, 6);
    expect(got.data[8]).toBeCloseTo(0, 6);
  });

  describe("refuses bad images with a code", () => {
    it("a truncated PNG: ERR_IMAGE_CORRUPT", async () => {
      const whole = png(64, 64, (x, y) => [x * 4, y * 4, 0]);
      const e = await codeOf(loadImage(whole.subarray(0, whole.length / 2)));
      expect(e.code).toBe(ImageErrorCode.Corrupt);
      expect(e.message).toMatch(/PNG/);
    });

    it("a corrupt JPEG: ERR_IMAGE_CORRUPT", async () => {
      // SOI, then an APP0 segment that claims more bytes than there are, then garbage.
      const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x13, 0x37]);
      const e = await codeOf(loadImage(jpeg));
      expect(e.code).toBe(ImageErrorCode.Corrupt);
      expect(e.message).toMatch(/JPEG/);
    });

    it("a PNG claiming 50000×50000: ERR_IMAGE_TOO_LARGE, refused from the header", async () => {
      const before = process.memoryUsage().rss;
      const e = await codeOf(loadImage(pngClaiming(50_000, 50_000)));
      expect(e.code).toBe(ImageErrorCode.TooLarge);
      expect(e.message).toContain("50000x50000 = 2500000000 pixels");
      expect(e.message).toContain("maxPixels");
      // 7.5 GB of pixels were never allocated.
      expect(process.memoryUsage().rss - before).toBeLessThan(256 * 1024 * 1024);
    });

    it("an image over a lowered maxPixels: ERR_IMAGE_TOO_LARGE", async () => {
      const e = await codeOf(
        loadImage(
          png(20, 20, () => [1, 2, 3]),
          { maxPixels: 399 },
        ),
      );
      expect(e.code).toBe(ImageErrorCode.TooLarge);
    });

    it("a 0×0 PNG, and 0×0 raw pixels: ERR_IMAGE_EMPTY", async () => {
      expect((await codeOf(loadImage(pngClaiming(0, 0)))).code).toBe(ImageErrorCode.Empty);
      const raw = loadImage({ data: new Uint8Array(), width: 0, height: 0, channels: 3 });
      expect((await codeOf(raw)).code).toBe(ImageErrorCode.Empty);
    });

    it("a file that is no image: ERR_IMAGE_FORMAT, naming the file", async () => {
      const file = join(tmp.path, "notes.txt");
      writeFileSync(file, "these are not pixels\n");
      const e = await codeOf(loadImage(file));
      expect(e.code).toBe(ImageErrorCode.Format);
      expect(e.message).toContain(file);
      expect(e.message).toContain("74 68 65 73"); // "thes"
    });

    it("a missing file: ERR_IO", async () => {
      const e = await codeOf(loadImage(join(tmp.path, "missing.png")));
      expect(e.code).toBe("ERR_IO");
    });

    it("raw pixels whose buffer does not match the size: ERR_INVALID_INPUT", async () => {
      const e = await codeOf(loadImage({ data: new Uint8Array(11), width: 2, height: 2, channels: 3 }));
      expect(e.code).toBe("ERR_INVALID_INPUT");
      expect(e.message).toContain("needs 12");
    });

    it("options outside their schema: ERR_INVALID_INPUT before any work", async () => {
      const e = await codeOf(loadImage(Buffer.alloc(1), { std: [1, 0, 1] }));
      expect(e.code).toBe("ERR_INVALID_INPUT");
      expect(e.message).toContain("std");
    });
  });
});

describe("preprocessImages", () => {
  it("stacks rows into [batch, images, 1, 3, S, S], zero-padding shorter rows at the end", async () => {
    const red = { data: new Uint8Array(4 * 4 * 3).fill(200), width: 4, height: 4, channels: 3 as const };
    const grey = { data: new Uint8Array(4 * 4).fill(90), width: 4, height: 4, channels: 1 as const };
    const x = await preprocessImages([[red, grey], [grey]], { size: 4 });
    expect(x.shape).toEqual([2, 2, 1, 3, 4, 4]);
    const per = 3 * 4 * 4;
    const image = (b: number, t: number) => x.data.subarray((b * 2 + t) * per, (b * 2 + t + 1) * per);
    expect(image(0, 0)[0]).toBeCloseTo(normalized(200, 0), 6);
    expect(image(0, 1)[0]).toBeCloseTo(normalized(90, 0), 6);
    expect(image(1, 0)[per - 1]).toBeCloseTo(normalized(90, 2), 6);
    expect(Array.from(image(1, 1)).every((v) => v === 0)).toBe(true);
  });

  it("takes already preprocessed images as they are", async () => {
    const path = join(GOLDEN_DIR, "preprocess", "tall.png");
    const loaded = await loadImage(path);
    const x = await preprocessImages([[loaded, path]]);
    expect(x.shape).toEqual([1, 2, 1, 3, 224, 224]);
    expect(maxAbsDiff(x.data.subarray(0, loaded.data.length), loaded.data)).toBe(0);
    expect(maxAbsDiff(x.data.subarray(loaded.data.length), loaded.data)).toBe(0);
  });

  it("names the row and image that failed", async () => {
    const good = join(GOLDEN_DIR, "preprocess", "wide.png");
    const e = await codeOf(preprocessImages([[good], [good, Buffer.from("nope")]]));
    expect(e.code).toBe(ImageErrorCode.Format);
    expect(e.message).toMatch(/^row 1, image 1: /);
  });

  it("refuses a batch without any image", async () => {
    const e = await codeOf(preprocessImages([[], []]));
    expect(e.code).toBe("ERR_INVALID_INPUT");
  });
});
