"""The run report's PNG plots: accuracy per round, privacy spent and bytes per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(run_dir: Path, report: dict[str, Any]) -> None:
    """accuracy.png (global vs personal vs Bayes) and privacy_bytes.png (epsilon and bytes per round)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rounds"]
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    final_eval = report.get("federated_evaluation") or {}
    for key, label in (
        ("global_accuracy", "global (server test)"),
        ("personal_accuracy", "personal (own test)"),
        ("client_global_accuracy", "global (clients' test)"),
    ):
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        start = (report.get("initial") or {}).get(key)
        if key == "global_accuracy" and start is not None and pts:  # round 0: the initial model
            pts.insert(0, (0, start))
        if key == "client_global_accuracy":  # measured on the model after the round before
            pts = [(n - 1, v) for n, v in pts]
            if rows and final_eval.get("global_accuracy") is not None:
                pts.append((rows[-1]["round"], final_eval["global_accuracy"]))
        if pts:
            ax.plot(*zip(*pts, strict=False), marker="o", label=label)
    if report["final"].get("bayes_accuracy"):
        ax.axhline(report["final"]["bayes_accuracy"], ls="--", c="gray", label="Bayes-optimal (per user)")
    ax.set(xlabel="round", ylabel="pairwise accuracy", title="Accuracy per round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy.png", dpi=110)
    plt.close(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    eps = [(r["round"], r["epsilon"]) for r in rows if r.get("epsilon") is not None]
    if eps:
        a1.plot(*zip(*eps, strict=False), marker="o")
    a1.set(xlabel="round", ylabel="epsilon", title="Privacy spent")
    a1.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    a2.bar(rounds, [r["bytes_up"] / 1e6 for r in rows], label="up")
    a2.bar(
        rounds,
        [r["bytes_down"] / 1e6 for r in rows],
        bottom=[r["bytes_up"] / 1e6 for r in rows],
        label="down",
    )
    a2.set(xlabel="round", ylabel="MB", title="Bytes per round")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "privacy_bytes.png", dpi=110)
    plt.close(fig)
