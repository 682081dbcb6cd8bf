"""PII scrubber: recall and false positives on a labelled set, time on adversarial input, throughput.

Three figures:

1. Quality on ``tests/data/pii_labelled.jsonl`` (hand-made lines, each
   ``{"text", "pii": [{"kind", "text"}]}``; an empty ``pii`` marks a negative:
   version and section numbers, dates, prices, counts, ...). Recall is the share
   of labelled spans that a found span of the same kind covers; a false positive
   is a found span that overlaps no labelled span. Results go to
   ``benchmarks/results/pii/labelled.json``.
2. Seconds to scrub adversarial text of several shapes at n and 4n characters
   (linear time gives a ratio near 4, quadratic near 16).
3. Throughput (KB/s) and hit counts on the HH-RLHF harmless dev file, if present.

Usage: python benchmarks/pii_bench.py [--data PATH] [--repeats 3] [--adversarial-chars 50000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedrlhf.feedback.pii import Scrubber

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared/data/hh-rlhf-harmless/dev.jsonl.gz"
LABELLED = ROOT / "tests/data/pii_labelled.jsonl"
RESULTS = ROOT / "benchmarks/results/pii/labelled.json"

ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "AB12 repeated": lambda n: ("AB12 " * n)[:n],
    "digits with separators": lambda n: ("1 2-3.4 (5) " * n)[:n],
    "bracketed digits": lambda n: ("(1) " * n)[:n],
    "a@a.a. run": lambda n: ("a@a.a." * n)[:n],
    "1.1.1.1 run": lambda n: ("1." * n)[:n],
    "IBAN-like alnum": lambda n: ("DE89 " + "A1B2 " * n)[:n],
    "hex and colons": lambda n: ("1:a:" * n)[:n],
    "plus digits": lambda n: ("+1 " * n)[:n],
    "emails": lambda n: ("x@y.co " * n)[:n],
    "digit run": lambda n: "7" * n,
}
"""Shapes of crafted input that made earlier versions slow (quadratic or worse)."""


def load_labelled(path: Path = LABELLED) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Each line's text and its labelled ``(kind, start, end)`` spans."""
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        obj = json.loads(line)
        spans = []
        for label in obj["pii"]:
            start = obj["text"].find(label["text"])
            if start < 0:
                raise ValueError(f"{path}:{lineno}: {label['text']!r} is not in the text")
            spans.append((label["kind"], start, start + len(label["text"])))
        items.append((obj["text"], spans))
    return items


def score(scrubber: Scrubber, items: list[tuple[str, list[tuple[str, int, int]]]]) -> dict[str, Any]:
    """Recall per kind and false positives of ``scrubber`` on labelled items."""
    expected: Counter[str] = Counter()
    hit: Counter[str] = Counter()
    missed, spurious, fp_texts, negatives = [], [], 0, 0
    for text, labels in items:
        found = scrubber.find(text)
        for kind, s, e in labels:
            expected[kind] += 1
            if any(f.kind == kind and f.start <= s and f.end >= e for f in found):
                hit[kind] += 1
            else:
                missed.append([kind, text[s:e]])
        extra = [f for f in found if all(f.end <= s or f.start >= e for _, s, e in labels)]
        spurious += [[f.kind, f.text] for f in extra]
        negatives += not labels
        fp_texts += bool(extra) and not labels
    return {
        "texts": len(items),
        "labelled_spans": sum(expected.values()),
        "recall": sum(hit.values()) / sum(expected.values()),
        "per_kind": {k: {"labelled": expected[k], "found": hit[k]} for k in sorted(expected)},
        "missed": missed,
        "negatives": negatives,
        "negatives_with_a_hit": fp_texts,
        "false_positive_rate": fp_texts / negatives,
        "spurious_spans": spurious,
    }


def adversarial_seconds(scrubber: Scrubber, n: int) -> dict[str, tuple[float, float]]:
    """Seconds to scrub each adversarial shape at ``n`` and ``4 * n`` characters."""
    out = {}
    for name, make in ADVERSARIAL.items():
        times = []
        for size in (n, 4 * n):
            text = make(size)
            start = time.perf_counter()
            scrubber.scrub(text)
            times.append(time.perf_counter() - start)
        out[name] = (times[0], times[1])
    return out


def load_texts(path: Path) -> list[str]:
    """Every ``chosen`` and ``rejected`` dialogue of the file, in order."""
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            texts += [obj["chosen"], obj["rejected"]]
    return texts


def throughput(scrubber: Scrubber, path: Path, repeats: int) -> None:
    """Print KB/s and hit counts of ``scrubber`` on an HH-RLHF file."""
    texts = load_texts(path)
    kbytes = sum(len(t.encode("utf-8")) for t in texts) / 1024
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for text in texts:
            scrubber.scrub(text)
        best = min(best, time.perf_counter() - start)
    hits: Counter[str] = Counter()
    for text in texts:
        hits.update(s.kind for s in scrubber.find(text))
    print(f"data: {path.name}, {len(texts)} dialogues, {kbytes:.0f} KB")
    print(f"scrub throughput: {kbytes / best:.0f} KB/s ({best:.3f} s for the file, best of {repeats})")
    print(f"hits: {dict(sorted(hits.items()))}, total {sum(hits.values())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adversarial-chars", type=int, default=50_000)
    args = parser.parse_args()
    scrubber = Scrubber()
    print(f"kinds: {sorted(scrubber.kinds)}")

    result = score(scrubber, load_labelled())
    print(f"\nlabelled set {LABELLED.name}: {result['texts']} texts, {result['labelled_spans']} spans")
    print(f"{'kind':<12} {'labelled':>8} {'found':>6} {'recall':>7}")
    for kind, row in result["per_kind"].items():
        print(f"{kind:<12} {row['labelled']:>8} {row['found']:>6} {row['found'] / row['labelled']:>7.1%}")
    print(f"{'all':<12} {result['labelled_spans']:>8} {'':>6} {result['recall']:>7.1%}")
    print(f"missed: {result['missed']}")
    print(
        f"negatives with a hit: {result['negatives_with_a_hit']}/{result['negatives']} "
        f"({result['false_positive_rate']:.1%}); spurious spans: {result['spurious_spans']}"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")

    n = args.adversarial_chars
    print(f"\nadversarial input: seconds at {n:,} and {4 * n:,} chars (linear: ratio ~4, quadratic: ~16)")
    for name, (t1, t4) in adversarial_seconds(scrubber, n).items():
        print(f"{name:<24} {t1:8.3f} {t4:8.3f}  x{t4 / max(t1, 1e-9):.1f}")

    if args.data.exists():
        print()
        throughput(scrubber, args.data, args.repeats)
    else:
        print(f"\nHH-RLHF file not found ({args.data}): throughput skipped")


if __name__ == "__main__":
    main()
