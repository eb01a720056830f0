/**
 * The few Python string operations the reference metrics rely on, with Python's (not
 * JavaScript's) notion of whitespace: `str.split()` with no argument and `str.strip()`.
 * They differ from `/\s/` on U+001C–U+001F and U+0085 (Python whitespace) and U+FEFF (not).
 */

const PY_SPACE =
  "\\t\\n\\v\\f\\r \\u001C-\\u001F\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";
const PY_RUNS = new RegExp(`[${PY_SPACE}]+`, "u");
const PY_EDGES = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, "gu");
const PY_TRAILING = new RegExp(`[${PY_SPACE}]+$`, "u");

/** `s.split()`: the non-empty runs between whitespace. */
export function pySplit(s: string): string[] {
  return s.split(PY_RUNS).filter((w) => w.length > 0);
}

/** `s.strip()`. */
export function pyStrip(s: string): string {
  return s.replace(PY_EDGES, "");
}

/** `s.rstrip()`. */
export function pyRstrip(s: string): string {
  return s.replace(PY_TRAILING, "");
}
