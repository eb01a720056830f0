#!/usr/bin/env python3
"""Expected values for the TypeScript metrics (test/eval-metrics.test.ts).

Reads test/fixtures/metrics/cases.json and writes test/fixtures/metrics/expected.json with:

- for each caption set: the PTB tokenization of pycocoevalcap's `PTBTokenizer` (per caption,
  punctuation removed) and the raw output of the Java tokenizer it wraps; corpus and per-image
  BLEU-1..4 from pycocoevalcap's `Bleu` scorer and CIDEr-D from its `Cider` scorer, called
  directly on that tokenization, as `COCOEvalCap.evaluate()` calls them (the full `evaluate()`
  also runs SPICE, which downloads models, so it is not used); and the same scorers on the
  untokenized captions (the `pretokenized` path);
- for the VQA cases: per-question and mean accuracy with OpenFlamingo's `vqa_metric.py` logic
  (mlfoundations/open_flamingo 655f693) and with the official evaluator's, in its VQA v2.0
  release (GT-Vision-Lab/VQA vqaEval.py a4f1afd; the Python 3 port c4e6a0e is the same) and on
  master since March 2021 (a013f00), re-implemented below from those files;
- for the tokenizer stress lines: pycocoevalcap's tokenization and the raw Java output.

Dev-only. Environment (nothing of it is committed):

    python3 -m venv /work/venv-metrics
    /work/venv-metrics/bin/pip install pycocoevalcap==1.2   # bundles stanford-corenlp-3.4.1.jar
    apt-get install -y default-jre-headless                 # java for the PTB tokenizer
    /work/venv-metrics/bin/python scripts/metrics/make_vectors.py
    npx biome format --write test/fixtures/metrics          # the repository's JSON layout
"""

import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer import ptbtokenizer
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "test" / "fixtures" / "metrics"


# ---------------------------------------------------------------------------------------------
# Captions: pycocoevalcap itself.
# ---------------------------------------------------------------------------------------------


def raw_ptb(sentences):
    """What the Java tokenizer prints for these sentences, run exactly as PTBTokenizer.tokenize
    runs it (same joined text, same command, same working directory)."""
    jar_dir = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
    text = "\n".join(s.replace("\n", " ") for s in sentences)
    path = os.path.join(jar_dir, "make_vectors_input.txt")
    with open(path, "wb") as f:
        f.write(text.encode())
    try:
        cmd = ["java", "-cp", ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR,
               "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
               os.path.basename(path)]
        out = subprocess.run(cmd, cwd=jar_dir, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    finally:
        os.remove(path)
    return out.stdout.decode()


def tokenize(captions):
    """pycocoevalcap's tokenization of an ordered list of captions, as evaluate() runs it."""
    tokenized = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    return [tokenized[i][0] for i in range(len(captions))]


def scores(gts, res):
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_per_image = Cider().compute_score(gts, res)
    n = len(gts)
    return {
        "bleu": {
            "scores": [float(b) for b in bleu],
            # pycocoevalcap returns [k][image]; stored as [image][k].
            "perImage": [[float(bleu_per_image[k][i]) for k in range(4)] for i in range(n)],
        },
        "cider": {"score": float(cider), "perImage": [float(c) for c in cider_per_image]},
    }


def caption_set(samples):
    refs = [s["references"] for s in samples]
    cands = [s["candidate"] for s in samples]
    # evaluate(): gts = tokenizer.tokenize(gts); res = tokenizer.tokenize(res). Two Java runs,
    # the references of all images in one, the candidates in the other.
    gts_tok = PTBTokenizer().tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
    res_tok = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(cands)})
    flat_refs = [r for rs in refs for r in rs]
    return {
        "tokenized": {
            "candidates": [res_tok[i][0] for i in range(len(cands))],
            "references": [gts_tok[i] for i in range(len(refs))],
        },
        "ptbOutput": {"candidates": raw_ptb(cands), "references": raw_ptb(flat_refs)},
        "tokenizedScores": scores(gts_tok, res_tok),
        "pretokenizedScores": scores({i: rs for i, rs in enumerate(refs)}, {i: [c] for i, c in enumerate(cands)}),
    }


# ---------------------------------------------------------------------------------------------
# VQA: the two evaluators' answer processing, restated from their sources.
# ---------------------------------------------------------------------------------------------

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
assert len(CONTRACTIONS) == 120
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ["a", "an", "the"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def process_punctuation(in_text):
    out_text = in_text
    for p in PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(COMMA_STRIP, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    # As the reference: re.UNICODE lands in the `count` argument (at most 32 replacements).
    return PERIOD_STRIP.sub("", out_text, re.UNICODE)


def process_digit_article(in_text):
    words = []
    for word in in_text.lower().split():
        word = MANUAL_MAP.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def clean(text):
    return text.replace("\n", " ").replace("\t", " ").strip()


def question_accuracy(prediction, answers, evaluator):
    # Answer records as the reference holds them: distinct ids, so `item != gtAnsDatum` leaves
    # out exactly one record.
    records = [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]
    if evaluator == "openflamingo":  # open_flamingo 655f693
        res_ans = process_digit_article(process_punctuation(clean(prediction)))
        for r in records:
            r["answer"] = process_digit_article(process_punctuation(clean(r["answer"])))
    elif evaluator == "official":  # VQA a4f1afd / c4e6a0e
        res_ans = process_digit_article(process_punctuation(clean(prediction)))
        if len(set(r["answer"] for r in records)) > 1:
            for r in records:
                r["answer"] = process_punctuation(r["answer"])
    else:  # "official-2021": VQA a013f00
        for r in records:
            r["answer"] = clean(r["answer"])
        res_ans = clean(prediction)
        if len(set(r["answer"] for r in records)) > 1:
            for r in records:
                r["answer"] = process_digit_article(process_punctuation(r["answer"]))
            res_ans = process_digit_article(process_punctuation(res_ans))
    accs = []
    for datum in records:
        others = [item for item in records if item != datum]
        matching = [item for item in others if item["answer"] == res_ans]
        accs.append(min(1, float(len(matching)) / 3))
    return float(sum(accs)) / len(accs)


def vqa(cases):
    out = {"normalizedPredictions": [process_digit_article(process_punctuation(clean(c["prediction"]))) for c in cases]}
    for evaluator in ("openflamingo", "official", "official-2021"):
        per_question = [question_accuracy(c["prediction"], c["answers"], evaluator) for c in cases]
        out[evaluator] = {"accuracy": float(sum(per_question)) / len(per_question), "perQuestion": per_question}
    return out


# ---------------------------------------------------------------------------------------------


def main():
    cases = json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))
    java = subprocess.run(["java", "-version"], stderr=subprocess.PIPE, check=True).stderr.decode().splitlines()[0]
    expected = {
        "provenance": {
            "script": "scripts/metrics/make_vectors.py",
            "pycocoevalcap": metadata.version("pycocoevalcap"),
            "tokenizer": ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR + " PTBTokenizer -preserveLines -lowerCase",
            "java": java,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "vqa": "open_flamingo/eval/vqa_metric.py @ mlfoundations/open_flamingo 655f693; "
            "PythonEvaluationTools/vqaEvaluation/vqaEval.py @ GT-Vision-Lab/VQA a4f1afd (= c4e6a0e) and a013f00",
        },
        "captionSets": [{"name": s["name"], **caption_set(s["samples"])} for s in cases["captionSets"]],
        "vqa": vqa(cases["vqa"]),
        "tokenizer": {
            "ptbOutput": raw_ptb(cases["tokenizerLines"]),
            "tokenized": tokenize(cases["tokenizerLines"]),
        },
    }
    (FIXTURES / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURES / 'expected.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
