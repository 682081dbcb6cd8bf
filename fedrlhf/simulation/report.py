"""The run report: ``report.json`` (the ARCHITECTURE.md contract), ``report.md`` and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrlhf.aggregation.rules import FILTERING_RULES
from fedrlhf.config import RunConfig
from fedrlhf.federation.checkpoint import ServerState
from fedrlhf.io import atomic_write_bytes, atomic_write_json
from fedrlhf.simulation.report_markdown import FINAL_ROWS, markdown
from fedrlhf.simulation.report_plot import plot

__all__ = ["FINAL_ROWS", "Progress", "markdown", "plot", "round_line", "write_report"]


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
        if self._progress is not None:
            self._progress.update(self._task, completed=row["round"], info=round_line(row))


def round_line(row: dict[str, Any]) -> str:
    """One round in one line: ``round 2: 4/4 clients, acc 0.712, eps 3.20``."""
    acc, eps = row.get("global_accuracy"), row.get("epsilon")
    return (
        f"round {row['round']}: {row.get('clients_ok')}/{row.get('clients_sampled')} clients, "
        f"acc {'-' if acc is None else f'{acc:.3f}'}, eps {'-' if eps is None else f'{eps:.2f}'}"
        + "".join(f"; {device} failed: {why}" for device, why in (row.get("failed") or {}).items())
    )


def _final(
    rows: list[dict[str, Any]],
    cfg: RunConfig,
    cohort: dict[str, Any],
    seconds: float,
    final_eval: dict[str, Any] | None = None,
) -> dict[str, Any]:
    last = rows[-1] if rows else {}
    # a round's client_global_accuracy is the model the devices received (after the round before);
    # the final model's is the federated evaluation after the last round
    final_clients = (final_eval or {}).get("global_accuracy")
    eps = [r["epsilon"] for r in rows if r.get("epsilon") is not None]
    user_level = cfg.user_dp.enabled or bool(cfg.secagg.enabled and cfg.secagg.dp_noise_multiplier)
    return {
        "global_accuracy": last.get("global_accuracy"),
        "personal_accuracy": last.get("personal_accuracy"),
        "client_global_accuracy": final_clients
        if final_clients is not None
        else last.get("client_global_accuracy"),
        "epsilon": max(eps) if eps else None,
        "delta": cfg.user_dp.delta if user_level else (cfg.privacy.delta if cfg.privacy.enabled else None),
        "epsilon_kind": "user" if user_level else ("record" if cfg.privacy.enabled else None),
        "attack_success_rate": last.get("attack_success_rate"),
        "seconds": seconds,
        "bytes_up": sum(r.get("bytes_up", 0) for r in rows),
        "bytes_down": sum(r.get("bytes_down", 0) for r in rows),
        "attackers_dropped_per_round": _attackers_dropped(rows, cfg, cohort),
        "timing": _timing(rows, seconds),
        **{k: v for k, v in cohort.items() if k.startswith("bayes") or k.startswith("population")},
    }


def _timing(rows: list[dict[str, Any]], seconds: float) -> dict[str, float] | None:
    """Where the run's wall time went, summed over rounds (see ``run_round``'s ``timing``):
    the clients' stage of each round (wall), the devices' own compute (sum over devices, of which
    the workers run several at a time), aggregation, evaluation, identification, checkpoints, and
    the rest: start-up (cohort, Flower, the initial evaluation) and the final evaluation."""
    timed = [r["timing"] for r in rows if isinstance(r.get("timing"), dict) and "total" in r["timing"]]
    if not timed or len(timed) != len(rows):  # a resumed run: its earlier rounds kept no timing
        return None
    keys = ("train_stage", "client_compute", "aggregation", "evaluation", "identification", "checkpoint")
    total = {k: float(sum(t.get(k) or 0.0 for t in timed)) for k in keys}
    total["rounds"] = float(sum(t["total"] for t in timed))
    total["outside_rounds"] = seconds - total["rounds"]
    return total


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
    initial = dict(state.history[0]) if state.history and state.history[0].get("round") == 0 else None
    warm = initial.pop("warm_start", None) if initial is not None else None
    report = {
        "task": cfg.federation.task,  # reward, or dpo / kto: the global model is a policy LoRA
        "rounds": rows,
        "initial": initial,
        "warm_start": warm,  # the server's public, non-private warm start (None: none)
        "final": _final(rows, cfg, cohort, seconds, state.final_eval),
        "federated_evaluation": state.final_eval,  # the final model on sampled clients' own test data
        "cohort": cohort,
        "config": cfg.to_dict(),
    }
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_bytes(run_dir / "report.md", markdown(report).encode())
    plot(run_dir, report)
    return report
