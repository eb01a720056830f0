/**
 * A small longest-match scanner with JFlex semantics, so that a JFlex grammar (here, the one
 * behind Stanford's PTBTokenizer) can be restated rule for rule in TypeScript.
 *
 * JFlex picks, at each position, the rule with the longest match, and among equally long
 * matches the rule written first. JavaScript regular expressions cannot answer "longest
 * match" (alternation is ordered, not POSIX), so patterns are compiled here into one
 * Thompson NFA whose accepting states carry their rule index, run as a lazily built DFA.
 *
 * Pattern syntax: a subset of JavaScript regex syntax. `( )` / `(?: )` group, `|`, `*`, `+`,
 * `?`, `{m}`, `{m,n}`, `[...]`, `[^...]`, `.` (any code unit but `\n`), `\uXXXX`, `\p{..}`
 * (a Unicode property, on UTF-16 code units as JFlex's `%unicode` scanners of the time read
 * them) and `\t \n \r \f`. As with JFlex's `%caseless`, letters written outside a character
 * class match either case; character classes match exactly what they list.
 */

/** A predicate on one UTF-16 code unit. */
type CharTest = (code: number) => boolean;

type Node =
  | { kind: "char"; test: CharTest }
  | { kind: "seq"; items: Node[] }
  | { kind: "alt"; items: Node[] }
  | { kind: "repeat"; item: Node; min: number; max: number };

const propertyTables = new Map<string, Uint8Array>();

/** Membership of every BMP code unit in a Unicode property, computed once per property. */
function propertyTest(name: string): CharTest {
  let table = propertyTables.get(name);
  if (!table) {
    const re = new RegExp(`^\\p{${name}}$`, "u");
    table = new Uint8Array(0x10000);
    for (let c = 0; c < 0x10000; c++) table[c] = re.test(String.fromCharCode(c)) ? 1 : 0;
    propertyTables.set(name, table);
  }
  const t = table;
  return (c) => t[c] === 1;
}

function caselessTest(ch: string): CharTest {
  const codes = new Set([ch.charCodeAt(0)]);
  for (const variant of [ch.toLowerCase(), ch.toUpperCase()]) {
    if (variant.length === 1) codes.add(variant.charCodeAt(0));
  }
  if (codes.size === 1) {
    const only = ch.charCodeAt(0);
    return (c) => c === only;
  }
  return (c) => codes.has(c);
}

class PatternParser {
  private pos = 0;

  constructor(private readonly src: string) {}

  parse(): Node {
    const node = this.alternation();
    if (this.pos !== this.src.length) this.fail("unexpected ')'");
    return node;
  }

  private fail(message: string): never {
    throw new Error(`pattern ${JSON.stringify(this.src)} at ${this.pos}: ${message}`);
  }

  private peek(): string | undefined {
    return this.src[this.pos];
  }

  private alternation(): Node {
    const items = [this.sequence()];
    while (this.peek() === "|") {
      this.pos++;
      items.push(this.sequence());
    }
    return items.length === 1 ? (items[0] as Node) : { kind: "alt", items };
  }

  private sequence(): Node {
    const items: Node[] = [];
    for (let ch = this.peek(); ch !== undefined && ch !== "|" && ch !== ")"; ch = this.peek()) {
      items.push(this.quantified());
    }
    return items.length === 1 ? (items[0] as Node) : { kind: "seq", items };
  }

  private quantified(): Node {
    let node = this.atom();
    for (;;) {
      const ch = this.peek();
      if (ch === "*") node = { kind: "repeat", item: node, min: 0, max: Infinity };
      else if (ch === "+") node = { kind: "repeat", item: node, min: 1, max: Infinity };
      else if (ch === "?") node = { kind: "repeat", item: node, min: 0, max: 1 };
      else if (ch === "{") {
        const m = /^\{(\d+)(,(\d*))?\}/.exec(this.src.slice(this.pos));
        if (!m) this.fail("bad {m,n}");
        const min = Number(m[1]);
        const max = m[2] === undefined ? min : m[3] === "" ? Infinity : Number(m[3]);
        node = { kind: "repeat", item: node, min, max };
        this.pos += m[0].length - 1;
      } else return node;
      this.pos++;
    }
  }

  private atom(): Node {
    const ch = this.peek();
    if (ch === "(") {
      this.pos += this.src.startsWith("(?:", this.pos) ? 3 : 1;
      const inner = this.alternation();
      if (this.peek() !== ")") this.fail("missing ')'");
      this.pos++;
      return inner;
    }
    if (ch === "[") return { kind: "char", test: this.charClass() };
    if (ch === ".") {
      this.pos++;
      return { kind: "char", test: (c) => c !== 10 };
    }
    if (ch === "\\") {
      const escaped = this.escape();
      return { kind: "char", test: typeof escaped === "string" ? caselessTest(escaped) : escaped };
    }
    this.pos++;
    return { kind: "char", test: caselessTest(ch as string) };
  }

  /** After a backslash: a literal character, or a property test for `\p{..}`. */
  private escape(): string | CharTest {
    this.pos++; // the backslash
    const ch = this.src[this.pos++];
    if (ch === undefined) this.fail("dangling backslash");
    if (ch === "u") {
      const hex = this.src.slice(this.pos, this.pos + 4);
      if (!/^[0-9A-Fa-f]{4}$/.test(hex)) this.fail("bad \\u escape");
      this.pos += 4;
      return String.fromCharCode(Number.parseInt(hex, 16));
    }
    if (ch === "p") {
      const m = /^\{([A-Za-z_]+)\}/.exec(this.src.slice(this.pos));
      if (!m) this.fail("bad \\p{..}");
      this.pos += m[0].length;
      return propertyTest(m[1] as string);
    }
    const controls: Record<string, string> = { t: "\t", n: "\n", r: "\r", f: "\f" };
    return controls[ch] ?? ch;
  }

  private charClass(): CharTest {
    this.pos++; // [
    let negated = false;
    if (this.peek() === "^") {
      negated = true;
      this.pos++;
    }
    const tests: CharTest[] = [];
    const ranges: Array<[number, number]> = [];
    let first = true;
    while (this.peek() !== "]" || first) {
      first = false;
      if (this.peek() === undefined) this.fail("missing ']'");
      const lo = this.classChar();
      if (typeof lo !== "string") {
        tests.push(lo);
        continue;
      }
      if (this.peek() === "-" && this.src[this.pos + 1] !== "]") {
        this.pos++;
        const hi = this.classChar();
        if (typeof hi !== "string") this.fail("property as a range end");
        ranges.push([lo.charCodeAt(0), hi.charCodeAt(0)]);
      } else {
        ranges.push([lo.charCodeAt(0), lo.charCodeAt(0)]);
      }
    }
    this.pos++; // ]
    const inClass = (c: number) => ranges.some(([lo, hi]) => c >= lo && c <= hi) || tests.some((t) => t(c));
    // Latin-1 membership is tabulated: nearly every code unit of a caption is there.
    const latin1 = Uint8Array.from({ length: 256 }, (_, c) => (inClass(c) !== negated ? 1 : 0));
    return (c) => (c < 256 ? latin1[c] === 1 : inClass(c) !== negated);
  }

  private classChar(): string | CharTest {
    if (this.peek() === "\\") return this.escape();
    return this.src[this.pos++] as string;
  }
}

/** The length of every string `node` matches, or null when that varies. */
function fixedLength(node: Node): number | null {
  switch (node.kind) {
    case "char":
      return 1;
    case "seq": {
      let total = 0;
      for (const item of node.items) {
        const n = fixedLength(item);
        if (n === null) return null;
        total += n;
      }
      return total;
    }
    case "alt": {
      const lengths = new Set(node.items.map(fixedLength));
      return lengths.size === 1 ? ([...lengths][0] as number | null) : null;
    }
    case "repeat": {
      const n = fixedLength(node.item);
      return n !== null && node.min === node.max ? n * node.min : null;
    }
  }
}

/** Thompson NFA: each state tests one code unit (then goes to `out[0]`), or is an epsilon split, or accepts. */
class Nfa {
  readonly tests: Array<CharTest | null> = [];
  readonly outs: number[][] = [];
  readonly accepts: number[] = [];

  private add(test: CharTest | null, outs: number[], accept = -1): number {
    this.tests.push(test);
    this.outs.push(outs);
    this.accepts.push(accept);
    return this.tests.length - 1;
  }

  acceptState(rule: number): number {
    return this.add(null, [], rule);
  }

  /** Compiles `node` so that it continues to state `next`; returns its start state. */
  compile(node: Node, next: number): number {
    switch (node.kind) {
      case "char":
        return this.add(node.test, [next]);
      case "seq":
        return node.items.reduceRight((to, item) => this.compile(item, to), next);
      case "alt":
        return this.add(
          null,
          node.items.map((item) => this.compile(item, next)),
        );
      case "repeat": {
        let start: number;
        if (node.max === Infinity) {
          const loop = this.add(null, []);
          (this.outs[loop] as number[]).push(this.compile(node.item, loop), next);
          start = loop;
        } else {
          start = next;
          for (let i = node.min; i < node.max; i++) start = this.add(null, [this.compile(node.item, start), next]);
        }
        for (let i = 0; i < node.min; i++) start = this.compile(node.item, start);
        return start;
      }
    }
  }

  /** The epsilon closure of `from`, keeping only testing and accepting states, sorted. */
  closure(from: Iterable<number>): number[] {
    const seen = new Set<number>();
    const kept: number[] = [];
    const stack = [...from];
    while (stack.length > 0) {
      const s = stack.pop() as number;
      if (seen.has(s)) continue;
      seen.add(s);
      if (this.tests[s] !== null || (this.accepts[s] as number) >= 0) kept.push(s);
      if (this.tests[s] === null) stack.push(...(this.outs[s] as number[]));
    }
    return kept.sort((a, b) => a - b);
  }

  /** Every end position at which the pattern starting at `start` matches `text` from `pos`. */
  matchEnds(start: number, text: string, pos: number, limit = text.length): number[] {
    const ends: number[] = [];
    let current = this.closure([start]);
    for (let i = pos; ; i++) {
      if (current.some((s) => (this.accepts[s] as number) >= 0)) ends.push(i);
      if (i >= limit || current.length === 0) return ends;
      const code = text.charCodeAt(i);
      const moved: number[] = [];
      for (const s of current) {
        const test = this.tests[s];
        if (test?.(code)) moved.push((this.outs[s] as number[])[0] as number);
      }
      current = this.closure(moved);
    }
  }
}

/** A lazily built DFA state: a set of NFA states, and the first rule any of them accepts. */
interface DfaState {
  readonly states: number[];
  readonly rule: number;
  readonly next: Map<number, DfaState | null>;
}

/** One scanner rule: `pattern`, optionally followed by a trailing context (JFlex's `pattern/trail`). */
export interface ScannerRule {
  pattern: string;
  trail?: string;
}

/** The winning rule at a position: its index, and how far its pattern (without the trailing context) reaches. */
export interface ScanMatch {
  rule: number;
  end: number;
}

/** Longest-match scanning over an ordered rule list, as JFlex does. */
export class Scanner {
  private readonly nfa = new Nfa();
  private readonly start: DfaState;
  private readonly dfaStates = new Map<string, DfaState>();
  /**
   * Per rule with a trailing context: the trail's length when fixed (the pattern then ends
   * that far before the match does, as in JFlex), else the start states of the pattern and
   * of the trail alone, to find where the pattern ends.
   */
  private readonly splits = new Map<number, number | { pattern: number; trail: number }>();

  constructor(rules: readonly ScannerRule[]) {
    const starts = rules.map((rule, index) => {
      const accept = this.nfa.acceptState(index);
      if (rule.trail === undefined) return this.nfa.compile(new PatternParser(rule.pattern).parse(), accept);
      const trail = new PatternParser(rule.trail).parse();
      const pattern = new PatternParser(rule.pattern).parse();
      const trailLength = fixedLength(trail);
      if (trailLength !== null) {
        this.splits.set(index, trailLength);
      } else {
        const patternAlone = this.nfa.compile(pattern, this.nfa.acceptState(index));
        const trailAlone = this.nfa.compile(trail, this.nfa.acceptState(index));
        this.splits.set(index, { pattern: patternAlone, trail: trailAlone });
      }
      return this.nfa.compile(pattern, this.nfa.compile(trail, accept));
    });
    this.start = this.dfaState(this.nfa.closure(starts));
  }

  private dfaState(states: number[]): DfaState {
    const key = states.join(",");
    let state = this.dfaStates.get(key);
    if (!state) {
      let rule = -1;
      for (const s of states) {
        const a = this.nfa.accepts[s] as number;
        if (a >= 0 && (rule < 0 || a < rule)) rule = a;
      }
      state = { states, rule, next: new Map() };
      this.dfaStates.set(key, state);
    }
    return state;
  }

  private step(from: DfaState, code: number): DfaState | null {
    const cached = from.next.get(code);
    if (cached !== undefined) return cached;
    const moved: number[] = [];
    for (const s of from.states) {
      const test = this.nfa.tests[s];
      if (test?.(code)) moved.push((this.nfa.outs[s] as number[])[0] as number);
    }
    const closure = this.nfa.closure(moved);
    const to = closure.length === 0 ? null : this.dfaState(closure);
    from.next.set(code, to);
    return to;
  }

  /** The longest non-empty match at `pos` (first rule on ties), or null when no rule matches. */
  match(text: string, pos: number): ScanMatch | null {
    let state: DfaState | null = this.start;
    let rule = -1;
    let end = pos;
    for (let i = pos; i < text.length; i++) {
      state = this.step(state, text.charCodeAt(i));
      if (state === null) break;
      if (state.rule >= 0) {
        rule = state.rule;
        end = i + 1;
      }
    }
    if (rule < 0) return null;
    const split = this.splits.get(rule);
    if (typeof split === "number") end -= split;
    else if (split) end = this.patternEnd(split, text, pos, end);
    return { rule, end };
  }

  /** Where the pattern part of `pattern/trail` ends when the whole matched [pos, total): the longest such split. */
  private patternEnd(split: { pattern: number; trail: number }, text: string, pos: number, total: number): number {
    const ends = this.nfa.matchEnds(split.pattern, text, pos, total);
    for (let k = ends.length - 1; k >= 0; k--) {
      const e = ends[k] as number;
      if (this.nfa.matchEnds(split.trail, text, e, total).includes(total)) return e;
    }
    throw new Error("scanner: trailing-context split not found");
  }
}
