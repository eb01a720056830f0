/**
 * The tokenization pycocoevalcap applies before BLEU and CIDEr, without Java.
 *
 * pycocoevalcap's `PTBTokenizer.tokenize` joins every caption of a set into one text (one
 * caption a line), runs Stanford CoreNLP 3.4.1's `PTBTokenizer -preserveLines -lowerCase` on
 * it, and drops the tokens of {@link PTB_PUNCTUATION} from each output line. The rules below
 * restate CoreNLP 3.4.1's `PTBLexer` (a JFlex grammar, run here by ./jflex.ts) with the
 * options that command line uses: PTB3 escaping (`(` → `-LRB-`, `"` → ``` `` ``` or `''`,
 * `…` → `...`, `–` → `--`, `€` → `$`, `½` → `1/2`), no americanizing, no escaping of `/`
 * and `*`. The 3.4.1 grammar itself was not at hand, so the rules were reconstructed from
 * CoreNLP's grammars of 2013 and 2017 and settled by differential tests against the 3.4.1
 * jar (see ./README.md; the committed vectors are in test/fixtures/metrics).
 *
 * Because the whole set is one text, a line's end can depend on the next line: an
 * abbreviation of the `etc.`/`Calif.`/`Inc.` kind, or an acronym such as `p.m.` before
 * `The`, gains a separate `.` token when the next caption starts with a capital. Captions
 * must therefore be tokenized together, in the order pycocoevalcap writes them.
 *
 * Known differences (./README.md): lower-casing a Greek capital sigma (Java decides the final
 * form by word boundaries, JavaScript by Unicode's Final_Sigma context), and Unicode classes
 * taken from JavaScript (`\p{L}`, `\p{Nd}`, …) rather than the tables baked into the 2014 jar.
 */

import { Scanner, type ScannerRule } from "./jflex.js";
import { pyRstrip } from "./python.js";

/** The tokens pycocoevalcap drops after tokenizing (`tokenizer/ptbtokenizer.py`). */
export const PTB_PUNCTUATION: ReadonlySet<string> = new Set([
  "''",
  "'",
  "``",
  "`",
  "-LRB-",
  "-RRB-",
  "-LCB-",
  "-RCB-",
  ".",
  "?",
  "!",
  ",",
  ":",
  "-",
  "--",
  "...",
  ";",
]);

// ---------------------------------------------------------------------------------------
// Character classes and token shapes (names follow PTBLexer's macros where they exist).
// ---------------------------------------------------------------------------------------

const SPACE = String.raw`[ \t\u00A0\u2000-\u200A\u3000]`;
const NEWLINE = String.raw`(?:\r|\r?\n|\u2028|\u2029|\u000B|\u000C|\u0085)`;
const SPACENL = `(?:${SPACE}|${NEWLINE})`;
const TAGNAME = String.raw`[A-Za-z][A-Za-z0-9_:.\-]*`;
const SGML = String.raw`<(?:[!?][A-Za-z\-][^>\r\n]*|${TAGNAME}(?: +(?:${TAGNAME}|${TAGNAME} *= *(?:'[^']*'|"[^"]*")))* *\/?|\/${TAGNAME}) *>`;
const SENTEND = String.raw`${SPACENL}(?:${SPACENL}|\p{Lu}|${SGML})`;
const SPLET = `&[aeiouAEIOU](?:acute|grave|uml);`;
const SPAMP = "&amp;";
const DIGIT = String.raw`[\p{Nd}\u07C0-\u07C9]`;
const LETTER = String.raw`(?:[\p{L}\p{M}\u00AD]|${SPLET})`;
const ALNUM = String.raw`[\p{L}\p{Nd}]`;
const APOS = String.raw`(?:['\u0092\u2019]|&apos;)`;
const APOSETC = String.raw`(?:${APOS}|[\`\u0091\u2018\u201B])`;
const HYPHEN = String.raw`[\-_\u058A\u2010\u2011]`;

const WORD = `${LETTER}(?:${LETTER}|${DIGIT})*(?:[.!?]${LETTER}(?:${LETTER}|${DIGIT})*)*`;
const SWORD = String.raw`[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*`;
const REDAUX = `${APOS}(?:[msdMSD]|re|ve|ll)`;
const SREDAUX = `n${APOSETC}t`;
const NUM = String.raw`(?:${DIGIT}+|${DIGIT}*(?:[.:,\u00AD\u066B\u066C]${DIGIT}+)+)`;
const NUMBER = String.raw`[\-+]?${NUM}`;
const DATE = String.raw`${DIGIT}{1,2}[\-\/]${DIGIT}{1,2}[\-\/]${DIGIT}{2,4}`;
const FRAC = String.raw`(?:${DIGIT}{1,4}[\- \u00A0])?${DIGIT}{1,4}(?:\\?\/|\u2044)${DIGIT}{1,4}`;
const FRAC2 = String.raw`[\u00BC\u00BD\u00BE\u2153-\u215E]`;
const SUBSUPNUM = String.raw`[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)`;
const DOLSIGN = String.raw`(?:[A-Z]*\$|#)`;
const DOLSIGN2 = String.raw`[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]`;

const THINGPART = `(?:[dDoOlL]${APOSETC}${ALNUM})?${ALNUM}+`;
const THING = `${THINGPART}(?:${HYPHEN}${THINGPART})*`;
const THINGA = `[A-Z]+(?:(?:[+&]|${SPAMP})[A-Z]+)+`;
const THING3 = String.raw`[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?\/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}`;
const ACRO = String.raw`(?:[A-Za-z](?:\.[A-Za-z])*|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R))`;
const ACRO2 = String.raw`(?:[A-Za-z](?:\.[A-Za-z])+|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R))`;
const HTHING = String.raw`[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|${ACRO2}\.))+`;

/** Words ending in an apostrophe, or with one inside, that stay one token. */
const APOWORD = [
  `${APOS}n${APOS}?`,
  `[lLdDjJ]${APOS}`,
  `Dunkin${APOS}`,
  `somethin${APOS}`,
  `ol${APOS}`,
  `${APOS}em`,
  String.raw`[A-HJ-XZn]${APOSETC}\p{L}{2}\p{L}*`,
  `${APOS}[2-9]0s`,
  `${APOS}till?`,
  String.raw`\p{L}\p{L}*[aeiouyAEIOUY]${APOSETC}[aeiouA-Z]\p{L}*`,
  `${APOS}cause`,
  String.raw`cont'd\.?`,
  "nor'easter",
  "c'mon",
  "e'er",
  "s'mores",
  "ev'ry",
  "li'l",
  "nat'l",
  `O${APOSETC}o`,
].join("|");

const FILENAME_EXT =
  "bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip";
const FILENAME = String.raw`[\p{Alphabetic}\p{Nd}\u00AD]+(?:\.[\p{Alphabetic}\p{Nd}\u00AD]+)*\.(?:${FILENAME_EXT})`;
const FULLURL = String.raw`https?:\/\/[^ \t\n\f\r"<>|(){}]+[^ \t\n\f\r"<>|.!?(){},\-]`;
// `,-_` in the second class is a range in JFlex (U+002C–U+005F: digits, capitals, `/`, `:`…),
// not three characters; written out so that the same characters are excluded.
const LIKELYURL = String.raw`(?:(?:www\.(?:[^ \t\n\f\r"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(?:(?:[^ \t\n\f\r"\`'<>|.!?(){}\u002C-\u005F$]+\.)+(?:com|net|org|edu)))(?:\/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},\-])?`;
const EMAIL = String.raw`(?:&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00A0{}]*@(?:[^ \t\n\f\r"<>|(){}.\u00A0]+\.)*[^ \t\n\f\r"<>|(){}.\u00A0]+(?:&gt;|>)?`;
const TWITTER = `@[a-zA-Z_][a-zA-Z_0-9]*|#${LETTER}+`;

const ABMONTH = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec";
const ABDAYS = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri";
const ABSTATE =
  "Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo";
const ABTITLE =
  "Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc";
const ABPTIT = String.raw`Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq`;
const ABCOMP = "Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys";
const ABCOMP2 = "Invt|Elec|Natl|M[ft]g|Dept";
const ABNUM = "tel|est|ext|sq";
/** Abbreviations normally followed by a lower-case word: before a capital, they also end the sentence. */
const ABBREV1 = String.raw`(?:${ABMONTH}|${ABDAYS}|${ABSTATE}|${ABCOMP}|${ABNUM}|${ABPTIT}|etc|al|seq|Bldg)\.`;
/** Abbreviations normally followed by a capital (titles, initials, acronyms). */
const ABBREV4 = String.raw`${ABTITLE}|vs|[v]|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph|${ACRO}|${ABCOMP2}`;
/** Abbreviations recognized only before a number ("no. 5", "fig. 3"). */
const ABBREV3 = String.raw`(?:ca|figs?|prop|nos?|art|bldg|pp|op)\.`;
const ABBREV2 = `(?:${ABBREV4})\\.`;
const ACRONYM = `${ACRO}\\.`;
/** Capitalized words after which an acronym's period also ends the sentence (case-sensitive first letter). */
const SENTENCE_STARTERS =
  "[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou";

const PHONE = String.raw`(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}`;
const LDOTS = String.raw`\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]`;
const FNMARKS = "@+|#+|_+";
const ASTS = String.raw`\*+|(?:\\\*){1,3}`;
const INSENTP = String.raw`[,;:\u3001]`;
const QUOTES = String.raw`${APOS}|''|[\`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}`;
const DBLQUOT = `"|&quot;`;
const TBSPEC = String.raw`-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls|Cap${APOS}n|c${APOS}est`;
const TBSPEC2 = `${APOS}[0-9][0-9]`;
const SMILEY = String.raw`[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]`;
const ASIANSMILEY = String.raw`[\-^x=~<>']_[\-^x=~<>']|\([\-^x=~<>'][_.]?[\-^x=~<>']\)|\([\^x=~<>']-[\^x=~<>'\`]\)`;
const MISCSYMBOL = String.raw`[+%&~^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]`;

// ---------------------------------------------------------------------------------------
// Token normalizations (PTB3 escaping, as the 3.4.1 command line has it on).
// ---------------------------------------------------------------------------------------

function latexQuotes(token: string, probablyLeft: boolean): string {
  let s = probablyLeft
    ? token.replace(/&apos;|'/g, "`").replace(/"|&quot;/g, "``")
    : token.replace(/&apos;|'/g, "'").replace(/"|&quot;/g, "''");
  s = s.replace(/[\u0091\u2018\u201B\u2039]/g, "`");
  s = s.replace(/[\u0092\u2019\u203A]/g, "'");
  s = s.replace(/[\u0093\u201C\u00AB]/g, "``");
  s = s.replace(/[\u0094\u201D\u00BB]/g, "''");
  return s;
}

const removeSoftHyphens = (s: string) => s.replace(/\u00AD/g, "") || "-";
const normalizeSpace = (s: string) => s.replace(/ /g, "\u00A0");
const normalizeParens = (s: string) => s.replace(/\(/g, "-LRB-").replace(/\)/g, "-RRB-");
const normalizeAmp = (s: string) => s.replace(/&amp;/gi, "&");
const normalizeCurrency = (s: string) =>
  s
    .replace(/\u00A2/g, "cents")
    .replace(/\u00A3/g, "#")
    .replace(/[\u0080\u00A4\u20A0\u20AC]/g, "$");
const normalizeFractions = (s: string) =>
  s
    .replace(/\u00BC/g, "1/4")
    .replace(/\u00BD/g, "1/2")
    .replace(/\u00BE/g, "3/4")
    .replace(/\u2153/g, "1/3")
    .replace(/\u2154/g, "2/3");

/**
 * What a rule does with its match: the token text (null: no token; `NEWLINE`: the line break
 * that `-preserveLines` prints), and how many characters it consumes (less than the match when
 * it pushes characters back for the next token).
 */
type Action = (text: string) => { token: string | null; consumed: number };

const NEWLINE_TOKEN = "\n";

const keep: Action = (text) => ({ token: text, consumed: text.length });
const map =
  (f: (s: string) => string): Action =>
  (text) => ({ token: f(text), consumed: text.length });
const skip: Action = (text) => ({ token: null, consumed: text.length });
/** Returns the whole match and gives its last `n` characters back (JFlex `yypushback` after `yytext()`). */
const reduplicateLast =
  (n: number): Action =>
  (text) => ({ token: text, consumed: text.length - n });
/** Gives the last `n` characters back and returns the rest (`yypushback` before `yytext()`). */
const splitLast =
  (n: number): Action =>
  (text) => ({ token: text.slice(0, text.length - n), consumed: text.length - n });

interface Rule extends ScannerRule {
  action: Action;
}

/** PTBLexer's rules, in its order (order breaks ties between equally long matches). */
const RULES: Rule[] = [
  { pattern: String.raw`c\+\+|(?:c|f)#`, action: keep },
  { pattern: `cannot|${APOS}twas`, action: splitLast(3) },
  { pattern: `${APOS}tis|gonna|gotta|lemme|gimme|wanna`, action: splitLast(2) },
  // A tag may span lines (quoted attribute values); only its spaces become no-break spaces.
  { pattern: SGML, action: map(normalizeSpace) },
  { pattern: String.raw`&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]`, action: map(() => "--") },
  { pattern: SPAMP, action: map(normalizeAmp) },
  { pattern: "&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);", action: keep },
  { pattern: WORD, trail: REDAUX, action: map(removeSoftHyphens) },
  { pattern: SWORD, trail: SREDAUX, action: map(removeSoftHyphens) },
  { pattern: WORD, action: map(removeSoftHyphens) },
  { pattern: APOWORD, action: keep },
  { pattern: `y${APOS}`, trail: String.raw`\p{L}`, action: keep },
  { pattern: FULLURL, action: keep },
  { pattern: LIKELYURL, action: keep },
  { pattern: EMAIL, action: keep },
  { pattern: TWITTER, action: keep },
  { pattern: REDAUX, trail: "[^A-Za-z]", action: map((s) => latexQuotes(s, false)) },
  { pattern: SREDAUX, action: map((s) => latexQuotes(s, false)) },
  { pattern: DATE, action: keep },
  { pattern: NUMBER, action: map(removeSoftHyphens) },
  { pattern: SUBSUPNUM, action: keep },
  { pattern: FRAC, action: map(normalizeSpace) },
  { pattern: FRAC2, action: map(normalizeFractions) },
  { pattern: TBSPEC, action: map(normalizeAmp) },
  { pattern: THING3, action: keep },
  { pattern: DOLSIGN, action: keep },
  { pattern: DOLSIGN2, action: map(normalizeCurrency) },
  {
    pattern: ACRONYM,
    trail: `${SPACENL}+(?:${SENTENCE_STARTERS}|${SGML})${SPACENL}`,
    // "I." before "The" is the letter and a period; "U.S." is kept whole and its period repeated.
    action: (text) => (text.length === 2 ? splitLast(1)(text) : reduplicateLast(1)(text)),
  },
  { pattern: ABBREV3, trail: String.raw`${SPACENL}?\p{Nd}`, action: keep },
  { pattern: String.raw`(?:pt[eyEY]|co)\.`, trail: `${SPACE}(?:ltd|lim)`, action: keep },
  { pattern: ABBREV1, trail: SENTEND, action: reduplicateLast(1) },
  // Followed by anything (two characters, newlines included) but a sentence start: one token.
  { pattern: ABBREV1, trail: String.raw`[\u0000-\uFFFF]{2}`, action: keep },
  // At the very end of the text: the period is also a sentence end.
  { pattern: ABBREV1, action: reduplicateLast(1) },
  { pattern: ABBREV2, action: keep },
  { pattern: ABBREV4, trail: SPACE, action: keep },
  { pattern: ACRO, trail: SPACENL, action: keep },
  { pattern: TBSPEC2, trail: SPACENL, action: keep },
  { pattern: FILENAME, trail: `(?:${SPACENL}|[.?!,])`, action: keep },
  { pattern: `${WORD}\\.`, trail: INSENTP, action: map(removeSoftHyphens) },
  { pattern: PHONE, action: map((s) => normalizeParens(normalizeSpace(s))) },
  { pattern: DBLQUOT, trail: "[A-Za-z0-9$]", action: map((s) => latexQuotes(s, true)) },
  { pattern: DBLQUOT, action: map((s) => latexQuotes(s, false)) },
  { pattern: String.raw`\u007F`, action: skip },
  { pattern: "<|&lt;", action: map(() => "<") },
  { pattern: ">|&gt;", action: map(() => ">") },
  { pattern: SMILEY, trail: "[^A-Za-z0-9]", action: map(normalizeParens) },
  { pattern: ASIANSMILEY, action: map(normalizeParens) },
  { pattern: String.raw`\{`, action: map(() => "-LCB-") },
  { pattern: String.raw`\}`, action: map(() => "-RCB-") },
  { pattern: String.raw`\[`, action: map(() => "-LSB-") },
  { pattern: String.raw`\]`, action: map(() => "-RSB-") },
  { pattern: String.raw`\(`, action: map(() => "-LRB-") },
  { pattern: String.raw`\)`, action: map(() => "-RRB-") },
  { pattern: String.raw`\-+`, action: map((s) => (s.length >= 3 && s.length <= 4 ? "--" : s)) },
  { pattern: LDOTS, action: map(() => "...") },
  { pattern: FNMARKS, action: keep },
  { pattern: ASTS, action: keep },
  { pattern: INSENTP, action: keep },
  { pattern: "[?!]+", action: keep },
  { pattern: String.raw`[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]`, action: keep },
  { pattern: "=", action: keep },
  { pattern: String.raw`\/`, action: keep },
  { pattern: `${HTHING}\\.`, trail: INSENTP, action: map(removeSoftHyphens) },
  { pattern: HTHING, action: map(removeSoftHyphens) },
  { pattern: `${THING}\\.`, trail: INSENTP, action: keep },
  { pattern: THING, action: keep },
  { pattern: `${THINGA}\\.`, trail: INSENTP, action: map(normalizeAmp) },
  { pattern: THINGA, action: map(normalizeAmp) },
  { pattern: "'", trail: String.raw`[A-Za-z][^ \t\n\r\u00A0]`, action: map((s) => latexQuotes(s, true)) },
  { pattern: REDAUX, action: map((s) => latexQuotes(s, false)) },
  { pattern: QUOTES, action: map((s) => latexQuotes(s, false)) },
  { pattern: "<<|>>", action: keep },
  { pattern: MISCSYMBOL, action: keep },
  { pattern: String.raw`\u0000|${SPACE}+|[\u200B\u200E\u200F\uFEFF]`, action: skip },
  { pattern: NEWLINE, action: (text) => ({ token: NEWLINE_TOKEN, consumed: text.length }) },
  { pattern: "&nbsp;", action: skip },
  // Untokenizable code units, each half of a surrogate pair included: dropped (`firstDelete`).
  { pattern: ".", action: skip },
];

let scanner: Scanner | undefined;

/**
 * What `java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase` (CoreNLP 3.4.1)
 * prints for `text`: each input line's tokens, lower-cased and joined by single spaces.
 */
export function runPtbTokenizer(text: string): string {
  scanner ??= new Scanner(RULES);
  let out = "";
  let lineStart = true;
  for (let pos = 0; pos < text.length; ) {
    const m = scanner.match(text, pos);
    // The last rule matches any code unit but "\n", and NEWLINE matches "\n".
    if (m === null) throw new Error(`ptb tokenizer: no rule matches at ${pos}`);
    const rule = RULES[m.rule] as Rule;
    const { token, consumed } = rule.action(text.slice(pos, m.end));
    if (token === NEWLINE_TOKEN) {
      out += "\n";
      lineStart = true;
    } else if (token !== null) {
      out += (lineStart ? "" : " ") + token.toLowerCase();
      lineStart = false;
    }
    pos += consumed;
  }
  return out;
}

/**
 * pycocoevalcap's `PTBTokenizer().tokenize` for an ordered list of captions: each caption
 * tokenized (tokens joined by single spaces), the tokens of {@link PTB_PUNCTUATION} removed.
 *
 * As in the reference, newlines inside a caption become spaces, the captions are joined by
 * newlines and tokenized as one text, and output line `i` goes to caption `i`. (A caption
 * holding another line break, such as "\r" or U+2028, therefore shifts every later caption
 * by a line in the reference too; this is reproduced, not corrected.)
 */
export function ptbTokenize(captions: readonly string[]): string[] {
  const text = captions.map((c) => c.replaceAll("\n", " ")).join("\n");
  const lines = runPtbTokenizer(text).split("\n");
  return captions.map((_, i) =>
    pyRstrip(lines[i] ?? "")
      .split(" ")
      .filter((w) => !PTB_PUNCTUATION.has(w))
      .join(" "),
  );
}
