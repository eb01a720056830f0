/**
 * A small safetensors reader and writer for the tests: an 8-byte little-endian header
 * length, a JSON header `{ name: { dtype, shape, data_offsets: [begin, end] } }`, then the
 * raw little-endian data. Enough for the golden files (F32, I64) and for writing test
 * checkpoints; no Python involved.
 */

import { readFileSync, writeFileSync } from "node:fs";

export type SafeTensor =
  | { dtype: "F32"; shape: number[]; data: Float32Array }
  | { dtype: "I64"; shape: number[]; data: BigInt64Array }
  | { dtype: "I32"; shape: number[]; data: Int32Array };

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

const BYTES: Record<SafeTensor["dtype"], number> = { F32: 4, I64: 8, I32: 4 };

export function readSafetensors(path: string): Map<string, SafeTensor> {
  const file = readFileSync(path);
  const headerLength = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + headerLength).toString("utf8")) as Record<string, HeaderEntry>;
  const base = 8 + headerLength;
  const out = new Map<string, SafeTensor>();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [begin, end] = entry.data_offsets;
    // Copy into a fresh, aligned buffer: typed arrays need their element alignment.
    const bytes = new Uint8Array(end - begin);
    bytes.set(file.subarray(base + begin, base + end));
    const shape = entry.shape;
    switch (entry.dtype) {
      case "F32":
        out.set(name, { dtype: "F32", shape, data: new Float32Array(bytes.buffer) });
        break;
      case "I64":
        out.set(name, { dtype: "I64", shape, data: new BigInt64Array(bytes.buffer) });
        break;
      case "I32":
        out.set(name, { dtype: "I32", shape, data: new Int32Array(bytes.buffer) });
        break;
      default:
        throw new Error(`${path}: tensor ${name} has dtype ${entry.dtype}, which this test reader does not handle`);
    }
  }
  return out;
}

export function writeSafetensors(path: string, tensors: Map<string, SafeTensor>): void {
  const header: Record<string, HeaderEntry> = {};
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.length * BYTES[t.dtype]);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned, as the format recommends.
  json += " ".repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const jsonBytes = Buffer.from(json, "utf8");
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(jsonBytes.length));
  writeFileSync(path, Buffer.concat([length, jsonBytes, ...chunks]));
}

/** A tensor from a golden file that must exist and be float. */
export function f32(tensors: Map<string, SafeTensor>, name: string): { data: Float32Array; shape: number[] } {
  const t = tensors.get(name);
  if (t?.dtype !== "F32") throw new Error(`golden tensor ${name} is missing or not F32`);
  return { data: t.data, shape: t.shape };
}

/** A tensor from a golden file that must exist and be int64. */
export function i64(tensors: Map<string, SafeTensor>, name: string): { data: BigInt64Array; shape: number[] } {
  const t = tensors.get(name);
  if (t?.dtype !== "I64") throw new Error(`golden tensor ${name} is missing or not I64`);
  return { data: t.data, shape: t.shape };
}
