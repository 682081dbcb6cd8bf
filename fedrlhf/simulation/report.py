"""The run report: ``report.json`` (the ARCHITECTURE.md contract), ``report.md`` and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrlhf.aggregation.rules import FILTERING_RULES
from fedrlhf.config import RunConfig
from fedrlhf.federation.checkpoint import ServerState
from fedrlhf.io import atomic_write_bytes, atomic_write_json


class Progress:
    """A live rich progress bar: round, clients, accuracy, epsilon."""

    def __init__(self, rounds: int, *, enabled: bool = True) -> None:
        self.rounds, self.enabled = rounds, enabled
        self._progress: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]rounds"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("rounds", total=self.rounds, info="starting")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, row: dict[str, Any]) -> None:
        if self._progress is None:
            return
        acc = row.get("global_accuracy")
        eps = row.get("epsilon")
        info = (
            f"round {row['round']}: {row['clients_ok']}/{row['clients_sampled']} clients, "
            f"acc {'-' if acc is None else f'{acc:.3f}'}, eps {'-' if eps is None else f'{eps:.2f}'}"
        )
        self._progress.update(self._task, completed=row["round"], info=info)


def _final(
    rows: list[dict[str, Any]], cfg: RunConfig, cohort: dict[str, Any], seconds: float
) -> dict[str, Any]:
    last = rows[-1] if rows else {}
    eps = [r["epsilon"] for r in rows if r.get("epsilon") is not None]
    return {
        "global_accuracy": last.get("global_accuracy"),
        "personal_accuracy": last.get("personal_accuracy"),
        "client_global_accuracy": last.get("client_global_accuracy"),
        "epsilon": max(eps) if eps else None,
        "delta": cfg.user_dp.delta
        if cfg.user_dp.enabled
        else (cfg.privacy.delta if cfg.privacy.enabled else None),
        "epsilon_kind": "user" if cfg.user_dp.enabled else ("record" if cfg.privacy.enabled else None),
        "attack_success_rate": last.get("attack_success_rate"),
        "seconds": seconds,
        "bytes_up": sum(r.get("bytes_up", 0) for r in rows),
        "bytes_down": sum(r.get("bytes_down", 0) for r in rows),
        "attackers_dropped_per_round": _attackers_dropped(rows, cfg, cohort),
        **{k: v for k, v in cohort.items() if k.startswith("bayes") or k.startswith("population")},
    }


def _attackers_dropped(
    rows: list[dict[str, Any]], cfg: RunConfig, cohort: dict[str, Any]
) -> list[int] | None:
    """Per round, how many simulated attackers were left out: rejected on proof (an update above
    the clients' clip bound, a malformed one), by the norm-ratio check, or by a filtering rule.

    Secure mode: the attackers left out with their group."""
    attackers = set(cohort.get("attackers") or [])
    r = cfg.robust
    rejects = r.max_norm_ratio > 0 or r.client_clip_norm > 0 or cfg.secagg.enabled
    filters = r.rule in FILTERING_RULES or rejects
    if not attackers or not filters or cfg.user_dp.enabled:
        return None
    return [len(attackers & set(r.get("dropped") or [])) for r in rows]


def write_report(
    run_dir: Path, cfg: RunConfig, state: ServerState, cohort: dict[str, Any], *, seconds: float
) -> dict[str, Any]:
    """Write report.json / report.md / plots into ``run_dir``; return the report."""
    rows = [r for r in state.history if r.get("round", 0) > 0]
    report = {
        "rounds": rows,
        "initial": state.history[0] if state.history else None,
        "final": _final(rows, cfg, cohort, seconds),
        "federated_evaluation": state.final_eval,  # the final model on sampled clients' own test data
        "cohort": cohort,
        "config": cfg.to_dict(),
    }
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_bytes(run_dir / "report.md", markdown(report).encode())
    plot(run_dir, report)
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """A human-readable summary table."""
    final = report["final"]
    lines = [
        "# fedrlhf simulation report",
        "",
        "| round | global acc | personal acc | epsilon | clients ok | bytes up | bytes down | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rounds"]:
        lines.append(
            f"| {r['round']} | {_fmt(r.get('global_accuracy'))} | {_fmt(r.get('personal_accuracy'))} | "
            f"{_fmt(r.get('epsilon'))} | {r['clients_ok']}/{r['clients_sampled']} | {r['bytes_up']} | "
            f"{r['bytes_down']} | {r['seconds']:.1f} |"
        )
    lines += ["", "## Final", ""] + [f"- **{k}**: {_fmt(v)}" for k, v in final.items()]
    return "\n".join(lines) + "\n"


def plot(run_dir: Path, report: dict[str, Any]) -> None:
    """accuracy.png (global vs personal vs Bayes) and privacy_bytes.png (epsilon and bytes per round)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rounds"]
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("global_accuracy", "global (server test)"),
        ("personal_accuracy", "personal (own test)"),
        ("client_global_accuracy", "global (clients' test)"),
    ):
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
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
