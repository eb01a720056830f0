#!/usr/bin/env python3
"""The comparison table of a GPU (or CPU) run: our benchmark (flamingo-bench) against the
reference (shared/bench/reference_bench.py), same presets, same machine, same run.

usage: report.py OURS.json REF.json
       report.py [--parity parity.json] --ours A.json [B.json ...] --ref C.json [D.json ...]

Each JSON holds one object per preset (the keys of reference_bench.py). Ratios are stated
so that > 1 means ours is better: throughputs ours/reference, times and memory
reference/ours. Standard library only (runs on any python3).
"""
import argparse
import json
import sys

# (key pattern, label, unit, higher_is_better)
ROWS = [
    ("encode_images_per_s_b{n}", "encode + perceiver, images/s (b{n})", "img/s", True),
    ("prefill_ms_b1_img1_tok64", "prefill, 1 image + 64 tokens", "ms", False),
    ("generate_tokens_per_s_b{n}", "generate, tokens/s (b{n})", "tok/s", True),
    ("train_{label}_samples_per_s", "train {label}, samples/s", "samples/s", True),
    ("inference_peak_gib", "peak GPU memory, inference", "GiB", False),
    ("train_peak_gib", "peak GPU memory, training", "GiB", False),
    ("peak_rss_gib", "peak RSS", "GiB", False),
]


def load(paths):
    merged = {}
    for p in paths:
        try:
            with open(p) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            merged.setdefault("_errors", []).append(f"{p}: {e}")
            continue
        for k, v in data.items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k].update(v)
            else:
                merged[k] = v
    return merged


def fmt(v):
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v)
    if isinstance(v, (int, float)):
        a = abs(v)
        return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.1 else f"{v:.3g}"
    s = str(v)
    return s if len(s) < 40 else s[:37] + "…"


def expand(preset_ours, preset_ref):
    """The concrete keys present in either result, in table order."""
    keys = set(preset_ours) | set(preset_ref)
    rows = []
    for pattern, label, unit, better in ROWS:
        if "{" not in pattern:
            if pattern in keys:
                rows.append((pattern, label, unit, better))
            continue
        prefix, suffix = pattern.split("{")[0], pattern.split("}")[1]
        found = sorted(
            (k for k in keys if k.startswith(prefix) and k.endswith(suffix)),
            key=lambda k: (len(k), k),
        )
        for k in found:
            middle = k[len(prefix): len(k) - len(suffix)]
            name = "n" if "{n}" in pattern else "label"
            rows.append((k, label.replace("{" + name + "}", middle), unit, better))
    return rows


def ratio(ours, ref, better):
    if not isinstance(ours, (int, float)) or not isinstance(ref, (int, float)):
        return "—"
    if ours <= 0 or ref <= 0:
        return "—"
    r = ours / ref if better else ref / ours
    return f"{r:.2f}×"


def table(name, o, r):
    lines = [f"### {name}", "", "| figure | reference | ours | ratio (>1: ours better) |", "|---|---|---|---|"]
    for key, label, unit, better in expand(o, r):
        lines.append(f"| {label} ({unit}) | {fmt(r.get(key))} | {fmt(o.get(key))} | {ratio(o.get(key), r.get(key), better)} |")
    notes = []
    for side, d in (("reference", r), ("ours", o)):
        for k, v in sorted(d.items()):
            if isinstance(v, str) and (k.endswith("_error") or v.startswith("skipped") or k in ("inference", "training")):
                notes.append(f"- {side} `{k}`: {v}")
    for k in ("params_total", "params_trainable"):
        if k in o or k in r:
            notes.append(f"- {k}: reference {fmt(r.get(k))}, ours {fmt(o.get(k))}")
    for k in ("load_s", "synth_write_s", "inference_device_used_gib", "peak_rss_gib_load"):
        if k in o:
            notes.append(f"- ours {k}: {fmt(o[k])}")
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


def parity_section(p):
    lines = ["### gpu-parity (golden fixtures, f32)", ""]
    if "_errors" in p:
        return "\n".join(lines + [f"- could not read: {e}" for e in p["_errors"]])
    lines += [f"device {p.get('device')}: **{'PASS' if p.get('pass') else 'FAIL'}**", "",
              "| family | vision tokens | perceiver | logits | loss rel | greedy | beam3 | half-precision logits |",
              "|---|---|---|---|---|---|---|---|"]
    for fam, rec in p.items():
        if not isinstance(rec, dict):
            continue
        if "error" in rec:
            lines.append(f"| {fam} | error: {fmt(rec['error'])} | | | | | | |")
            continue
        e = lambda k: f"{rec[k]['max_abs_err']:.2e}" if k in rec else "—"
        half = rec.get("half_logits")
        lines.append(
            f"| {fam} | {e('vision_tokens')} | {e('perceiver_out')} | {e('logits')} | "
            f"{rec.get('loss', {}).get('rel_err', float('nan')):.2e} | {rec.get('greedy_tokens_equal')} | "
            f"{rec.get('beam3_tokens_equal')} | {(half['dtype'] + ' ' + format(half['max_abs_err'], '.2e')) if half else '—'} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pair", nargs="*", help="OURS.json REF.json")
    ap.add_argument("--ours", nargs="+", default=[])
    ap.add_argument("--ref", nargs="+", default=[])
    ap.add_argument("--parity")
    a = ap.parse_args()
    ours_paths, ref_paths = list(a.ours), list(a.ref)
    if a.pair:
        if len(a.pair) != 2:
            ap.error("positional form: OURS.json REF.json")
        ours_paths.append(a.pair[0])
        ref_paths.append(a.pair[1])
    if not ours_paths or not ref_paths:
        ap.error("give our results and the reference's")
    ours, ref = load(ours_paths), load(ref_paths)

    out = ["# flamingo-vlm vs reference OpenFlamingo", ""]
    head = []
    if "gpu" in ref or "gpu" in ours:
        head.append(f"GPU: {ref.get('gpu') or ours.get('gpu')}")
    head.append(f"reference: torch {ref.get('torch', '?')}, {ref.get('threads', '?')} CPU threads")
    head.append(f"ours: {ours.get('engine', '?')}, {ours.get('device', '?')} {ours.get('dtype', '?')}, {ours.get('threads', '?')} CPU threads")
    out += [" · ".join(head), ""]
    for side, d in (("ours", ours), ("reference", ref)):
        for e in d.get("_errors", []):
            out.append(f"- {side}: could not read {e}")
    if a.parity:
        out += [parity_section(load([a.parity])), ""]
    presets = [k for k, v in ours.items() if isinstance(v, dict)]
    presets += [k for k, v in ref.items() if isinstance(v, dict) and k not in presets]
    for name in presets:
        out += [table(name, ours.get(name, {}), ref.get(name, {})), ""]
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
