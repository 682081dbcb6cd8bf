"""Privacy vs utility on HH harmless: the DP recipe at several epsilons against non-private training.

    python benchmarks/privacy_utility.py                         # central rows, ~3 min on 2 cores
    python benchmarks/privacy_utility.py --with-lora             # + the non-private LoRA reference (~20 min)
    python benchmarks/privacy_utility.py --runs runs/hh-harmless-local-dp runs/hh-harmless-dp \\
        runs/hh-harmless                                         # + federated rows
    python benchmarks/privacy_utility.py --warm-start runs/warm  # + rows that start from a public model

Central rows train on the fixed 80/20 split of the HH harmless dev pairs (``common.hh_split``)
with ``fedrlhf.config.DP_RECIPE`` (the head alone on the frozen MiniLM's last 4 pooled layers,
full-batch DP-GD, 100 steps) at each target epsilon (delta 1e-5), the same recipe without
DP, the untrained model, and (``--with-lora``) ``fedrlhf train``'s non-private defaults (LoRA
on every linear layer, 2 epochs). With ``--warm-start DIR`` (a head-only reward model trained on
public data, e.g. ``fedrlhf train --data ../shared/data/hh-rlhf-helpful/helpful-base.jsonl.gz
--out runs/warm --trainable head --pool-layers 4``) the same central rows are repeated starting
from that model instead of the zero head, and the warm model itself is scored. Federated rows
are read from the ``report.json`` of ``fedrlhf simulate`` runs given with ``--runs``. Prints a
Markdown table and writes JSON and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from common import hh_split, peak_rss_mb  # noqa: E402

OUT = Path(__file__).parent / "results" / "privacy-utility"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epsilons", default="8,3,1", help="comma-separated target epsilons")
    p.add_argument("--with-lora", action="store_true", help="also train the non-private LoRA reference")
    p.add_argument("--reference", type=float, help="non-private LoRA accuracy measured before")
    p.add_argument("--warm-start", type=Path, help="saved head-only model to start from")
    p.add_argument("--runs", nargs="*", default=[], help="simulate run dirs to add as federated rows")
    p.add_argument(
        "--from-json", type=Path, help="redraw the table and plot of an earlier privacy_utility.json"
    )
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args()


def central(
    name: str, train: list, test: list, overrides: dict[str, Any], args: argparse.Namespace, work: Path
) -> dict:
    """Train one central model (the recipe with ``overrides``) and score it on the test pairs."""
    from fedrlhf.config import DP_RECIPE, NON_PRIVATE_DEFAULTS, ModelConfig, PrivacyConfig, TrainConfig
    from fedrlhf.models import RewardModel
    from fedrlhf.training import encode, evaluate
    from fedrlhf.training.data import encode_cached
    from fedrlhf.training.session import fit, train_model

    eps = overrides.get("epsilon")
    base = NON_PRIVATE_DEFAULTS if overrides.get("lora") else DP_RECIPE
    model = ModelConfig(
        max_length=args.max_length, trainable=base["model.trainable"], pool_layers=base["model.pool_layers"]
    )
    train_cfg = TrainConfig(
        epochs=base["train.epochs"],
        batch_size=base["train.batch_size"],
        lr=base["train.lr"],
        threads=args.threads,
    )
    privacy = PrivacyConfig(enabled=eps is not None, target_epsilon=eps, delta=1e-5)
    start = time.perf_counter()
    warm = overrides.get("warm")
    if overrides.get("untrained"):
        fitted, report = (RewardModel.from_pretrained(warm) if warm else RewardModel.build(model)), None
    elif warm:
        fitted = RewardModel.from_pretrained(warm)
        data = encode_cached(train, fitted.tokenizer, args.max_length, work / "cache")
        _, report = train_model(fitted, data, train_cfg, privacy=privacy,
                                ledger_path=work / f"{name}.json", progress=False)  # fmt: skip
    else:
        result = fit(train, model, train_cfg, privacy=privacy, ledger_path=work / f"{name}.json",
                     cache_dir=work / "cache", progress=False)  # fmt: skip
        fitted, report = result.model, result.privacy
    seconds = time.perf_counter() - start
    acc = evaluate(fitted, encode(test, fitted.tokenizer, args.max_length)).accuracy
    return {"setting": name, "mode": "central", "epsilon": (report or {}).get("epsilon"),
            "accuracy": acc, "seconds": round(seconds, 1)}  # fmt: skip


def federated(run: Path) -> dict:
    """A federated row from a simulate run's report."""
    report = json.loads((run / "report.json").read_text())
    final, cfg = report["final"], report.get("config", {})
    seconds = round(final.get("seconds") or 0, 1)
    secagg, privacy = cfg.get("secagg", {}), cfg.get("privacy", {})
    if secagg.get("enabled") and secagg.get("record_dp") and privacy.get("enabled"):
        how = "distributed DP (DP-FedSGD in one secure group)"
    elif privacy.get("enabled"):
        how = "local DP on each device"
    else:
        how = f"no DP, {cfg.get('model', {}).get('trainable', 'lora')}"
    if cfg.get("federation", {}).get("initial_model") or cfg.get("warm_start", {}).get("data"):
        how += ", warm start"
    return {"setting": f"{how} ({run.name})", "mode": "federated", "epsilon": final.get("epsilon"),
            "accuracy": final.get("global_accuracy"), "seconds": seconds,
            "start_accuracy": (report.get("initial") or {}).get("global_accuracy")}  # fmt: skip


def table(rows: list[dict], reference: float | None) -> str:
    lines = [
        "| setting | mode | epsilon | accuracy | cost of privacy (points) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = "-" if "untrained" in r["setting"] else "∞" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        cost = (
            "" if reference is None or r["accuracy"] is None else f"{100 * (reference - r['accuracy']):+.1f}"
        )
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"| {r['setting']} | {r['mode']} | {eps} | {acc} | {cost} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def _family(row: dict) -> str | None:
    """The curve a row belongs to in the plot (None: a reference line, not a curve)."""
    name = row["setting"]
    if "untrained" in name or name.startswith("LoRA"):
        return None
    warm = ", warm start" if "warm start" in name else ""
    if row["mode"] == "central":
        return "central" + warm
    kind = (
        "distributed DP"
        if name.startswith("distributed")
        else "local DP"
        if name.startswith("local")
        else "no DP"
    )
    return f"federated, {kind}{warm}"


def plot(rows: list[dict], path: Path, reference: float | None) -> None:
    """Accuracy against epsilon (no DP drawn at the right), one curve per mechanism."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = {1.0: 0, 3.0: 1, 8.0: 2, None: 3}
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    families: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        fam = _family(r)
        if fam is None or r["accuracy"] is None:
            continue
        eps = None if r["epsilon"] is None else min(positions, key=lambda e: abs((e or 1e9) - r["epsilon"]))
        families.setdefault(fam, []).append((positions[eps], r["accuracy"]))
    for fam, points in families.items():
        points.sort()
        style = "--" if "warm" in fam else "-"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", label=fam)
    if reference is not None:
        ax.axhline(reference, color="k", lw=1, label=f"central LoRA, no DP ({reference:.3f})")
    ax.axhline(0.5, color="k", lw=0.5, ls=":", label="untrained (zero head)")
    ax.set_xticks(list(positions.values()), ["1", "3", "8", "no DP"])
    ax.set(xlabel="epsilon (delta 1e-5)", ylabel="held-out pairwise accuracy", ylim=(0.4, 0.62),
           title="HH harmless: privacy vs utility (329 held-out pairs, SE 2.7 points)")  # fmt: skip
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        lora = [r["accuracy"] for r in saved["rows"] if r["setting"].startswith("LoRA")]
        reference = lora[0] if lora else saved.get("reference", args.reference)
        plot(saved["rows"], args.from_json.with_suffix(".png"), reference)
        print(table(saved["rows"], reference))
        return
    train, test = hh_split()
    settings: list[tuple[str, dict]] = [("untrained", {"untrained": True}), ("recipe, no DP", {})]
    settings += [(f"recipe, epsilon {e}", {"epsilon": float(e)}) for e in args.epsilons.split(",") if e]
    if args.with_lora:
        settings.insert(1, ("LoRA, no DP (fedrlhf train defaults)", {"lora": True}))
    if args.warm_start:
        warm = {"warm": args.warm_start}
        settings += [("warm start, untrained here", {"untrained": True, **warm}),
                     ("warm start + recipe, no DP", warm)]  # fmt: skip
        settings += [(f"warm start + recipe, epsilon {e}", {"epsilon": float(e), **warm})
                     for e in args.epsilons.split(",") if e]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in settings:
            rows.append(central(name, train, test, overrides, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    rows += [federated(Path(r)) for r in args.runs]
    lora = [r["accuracy"] for r in rows if r["setting"].startswith("LoRA")]
    reference = lora[0] if lora else args.reference
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "privacy_utility.json").write_text(
        json.dumps(
            {
                "train_pairs": len(train),
                "test_pairs": len(test),
                "rows": rows,
                "reference": reference,
                "peak_rss_mb": round(peak_rss_mb(), 1),
            },
            indent=2,
        )  # fmt: skip
    )
    plot(rows, args.out / "privacy_utility.png", reference)
    print(f"\nHH harmless dev 80/20: {len(train)} train / {len(test)} test pairs, delta 1e-5\n")
    print(table(rows, reference))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
