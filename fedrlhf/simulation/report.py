"""The run report: ``report.json`` (the ARCHITECTURE.md contract), ``report.md`` and PNG plots."""

from __future__ import annotations

from collections.abc import Sequence
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


_WORDS = {
    "mean": "plain average (FedAvg)",
    "krum": "Krum",
    "multi_krum": "Multi-Krum",
    "bulyan": "Bulyan",
    "dnc": "Divide-and-Conquer filter",
    "cosine_two_sided": "two-sided cosine filter",
    "error": "failed",
    "norm_ratio": "rejected as too large",
    "aggregation": "not aggregated",
}
"""Plain words for the rule names and failure kinds that ``replace("_", " ")`` does not give."""

_SERVER_OPTIMIZERS = {"fedavgm": "FedAvgM", "fedadam": "FedAdam", "fedyogi": "FedYogi"}

_ROUND_COLUMNS = "Round|Global|Personal|Epsilon|Devices replied|Up (MB)|Down (MB)|Time (s)|Notes"


def _words(name: str) -> str:
    return _WORDS.get(name, name.replace("_", " "))


def _pct(value: Any) -> str:
    """A share as a percentage: ``71.2%``."""
    return "–" if value is None else f"{100 * value:.1f}%"


def _mb(num_bytes: Any) -> str:
    """Bytes in megabytes: ``5.31 MB``."""
    mb = (num_bytes or 0) / 1e6
    return f"{mb:.2f} MB" if mb < 10 else f"{mb:.0f} MB"


def _duration(seconds: Any) -> str:
    """``42 s``, ``3 min 12 s``, ``1 h 05 min``."""
    if seconds is None:
        return "–"
    s = round(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _num(value: Any) -> str:
    """Any other JSON value in words (never a Python repr)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_num(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list):
        return ", ".join(_num(v) for v in value) or "none"
    return str(value)


def _cohort_words(cfg: dict[str, Any], deployed: bool = False) -> str:
    c, fed = cfg.get("cohort", {}), cfg.get("federation", {})
    if deployed:
        who = f"{c.get('num_clients')} expected devices, each training on its own data,"
    elif c.get("kind") == "synthetic":
        who = f"{c.get('num_clients')} simulated users with known preferences (synthetic cohort"
        who += f", Dirichlet alpha {c['alpha']:g})" if "alpha" in c else ")"
    else:
        split = "split evenly at random" if c.get("partition") == "iid" else "split unevenly by topic"
        who = f"{c.get('num_clients')} simulated users holding the pairs of {c.get('data')} ({split})"
    run = (
        f"{who} trained {_trained_words(cfg)} together over {fed.get('rounds')} rounds, "
        f"{fed.get('clients_per_round')} users per round"
    )
    if fed.get("personal"):
        run += ", each also training a personal adapter that never leaves the device"
    return run + "."


_TASK_WORDS = {
    "dpo": "with DPO on their preference pairs",
    "kto": "with KTO on thumbs up / down ratings (each preference pair read as its chosen answer "
    "rated up and its rejected one rated down)",
}


def _task(cfg: dict[str, Any]) -> str:
    return str(cfg.get("federation", {}).get("task", "reward"))


def _trained_words(cfg: dict[str, Any]) -> str:
    """What the federation trained: the reward model, or the policy's LoRA and how."""
    task = _task(cfg)
    if task not in _TASK_WORDS:
        return "one reward model"
    policy = cfg.get("policy", {})
    return (
        f"the LoRA (rank {policy.get('lora_r')}) of one policy, {policy.get('model')}, "
        f"{_TASK_WORDS[task]}, beta {policy.get('beta', 0.1):g},"
    )


def _accuracy_words(cfg: dict[str, Any]) -> str:
    if _task(cfg) == "reward":
        return (
            "Accuracy is pairwise: how often a model scores the response the user preferred above the "
            "other one (50% is a coin flip)."
        )
    return (
        "Accuracy is the policy's implicit-reward accuracy on preference pairs: how often "
        "beta * log(policy / reference) is higher for the preferred response than for the other "
        "one, the reference being the base model (50% is a coin flip; the untrained policy, equal "
        "to its reference, scores exactly 50%)."
    )


def _privacy_words(cfg: dict[str, Any], final: dict[str, Any]) -> str:
    eps, delta = final.get("epsilon"), final.get("delta")
    spent = f"epsilon {eps:.2f} at delta {delta:g}" if eps is not None and delta else "epsilon not measured"
    user, rec, sec = cfg.get("user_dp", {}), cfg.get("privacy", {}), cfg.get("secagg", {})
    if sec.get("enabled") and sec.get("dp_noise_multiplier"):
        return (
            "Privacy: distributed user-level differential privacy over secure groups (each device "
            f"clips its update to norm {sec['clip_norm']:g} and adds its share of noise multiplier "
            f"{sec['dp_noise_multiplier']:g} before masking; the server sees only noised group sums); "
            f"{spent} per user over the run."
        )
    if user.get("enabled"):
        return (
            f"Privacy: user-level differential privacy (each update clipped to norm {user['clip_norm']:g}, "
            f"noise multiplier {user['noise_multiplier']:g}); {spent} per user over the run."
        )
    if rec.get("enabled"):
        aim = (
            f"target epsilon {rec['target_epsilon']:g}"
            if rec.get("target_epsilon") is not None
            else f"noise multiplier {rec.get('noise_multiplier')}"
        )
        if sec.get("enabled") and sec.get("record_dp"):
            return (
                "Privacy: record-level distributed differential privacy (DP-FedSGD over secure groups: "
                "each round a device sends its records' clipped gradient sum plus its share of the "
                f"noise, before masking; {aim}); {spent}, the most any device spent."
            )
        return (
            f"Privacy: differential privacy on each device's records (DP-SGD, {aim}); "
            f"{spent}, the most any device spent."
        )
    return "Privacy: no differential privacy."


def _warm_start_words(report: dict[str, Any]) -> str:
    """The public warm start in one sentence, and that it is not private ('' without one)."""
    warm = report.get("warm_start")
    if not warm:
        return ""
    files = ", ".join(Path(d).name for d in warm.get("data") or [])
    words = (
        f"Before round 1 the server trained the global model on {warm.get('pairs')} public pairs "
        f"({files}, {warm.get('epochs'):g} epoch(s), {_duration(warm.get('seconds'))}), without "
        "differential privacy: public data, trained by the server"
    )
    if warm.get("accuracy") is not None:
        words += f"; it ranks {_pct(warm['accuracy'])} of {warm.get('held_out_pairs')} held-out public pairs"
    start = (report.get("initial") or {}).get("global_accuracy")
    if start is not None:
        words += f" and {_pct(start)} of the server's held-out pairs before round 1"
    return words + "."


def _defence_words(cfg: dict[str, Any]) -> str:
    r, sec, att = cfg.get("robust", {}), cfg.get("secagg", {}), cfg.get("attack", {})
    words = f"Updates combined by {_words(str(r.get('rule', 'mean')))}"
    optimizer = cfg.get("federation", {}).get("server_optimizer", "fedavg")
    if optimizer != "fedavg":
        words += f" and applied with the {_SERVER_OPTIMIZERS.get(optimizer, optimizer)} server optimiser"
    if r.get("num_malicious"):
        words += f", built to tolerate {r['num_malicious']} attacker(s) per round"
    if sec.get("enabled"):
        words += (
            f"; secure aggregation on (the server sees only sums of {sec.get('min_group_size')}+ devices)."
        )
    else:
        words += "; secure aggregation off (the server sees each update)."
    if att.get("name", "none") != "none" and att.get("fraction", 0) > 0:
        words += f" {att['fraction']:.0%} of the users are simulated attackers ({att['name']})."
    return words


def _outcome_words(report: dict[str, Any]) -> str:
    final, rounds = report["final"], report["rounds"]
    words = f"After round {rounds[-1]['round'] if rounds else 0} the global model ranks "
    if final.get("global_accuracy") is None and final.get("client_global_accuracy") is not None:
        words += f"{_pct(final['client_global_accuracy'])} of the devices' own test pairs correctly"
    else:
        words += f"{_pct(final.get('global_accuracy'))} of the server's held-out pairs correctly"
    if final.get("personal_accuracy") is not None:
        words += (
            f"; on the users' own test pairs the global model scores "
            f"{_pct(final.get('client_global_accuracy'))} and the personalised models "
            f"{_pct(final.get('personal_accuracy'))}"
        )
    if final.get("bayes_accuracy") is not None:
        words += f", against {_pct(final['bayes_accuracy'])} for the best possible per-user predictor"
    words += "."
    if final.get("attack_success_rate") is not None:
        words += f" The attack succeeded on {_pct(final['attack_success_rate'])} of its trigger pairs."
    return (
        f"{words} The run took {_duration(final.get('seconds'))} and moved "
        f"{_mb(final.get('bytes_up'))} from the devices and {_mb(final.get('bytes_down'))} to them."
        + _time_words(final.get("timing"))
    )


def _time_words(timing: dict[str, float] | None) -> str:
    """Where the time went, in one sentence (nothing for a resumed run)."""
    if not timing:
        return ""
    compute = timing.get("client_compute")
    device_time = f" (the devices' own compute: {_duration(compute)} summed over devices)" if compute else ""
    return (
        f" Rounds took {_duration(timing['rounds'])}: the devices' stage {_duration(timing['train_stage'])}"
        f"{device_time}, aggregation {_duration(timing['aggregation'])}, server evaluation "
        f"{_duration(timing['evaluation'])}; start-up and the final check "
        f"{_duration(timing['outside_rounds'])}."
    )


def _summary(report: dict[str, Any]) -> str:
    """The first paragraph: what ran and what came out."""
    cfg = report.get("config", {})
    parts = (
        _cohort_words(cfg, deployed=_deployed(report)),
        _privacy_words(cfg, report["final"]),
        _warm_start_words(report),
        _defence_words(cfg),
    )
    return " ".join(p for p in (*parts, _outcome_words(report)) if p)


FINAL_ROWS: dict[str, tuple[str, Any]] = {
    "global_accuracy": ("Global model, server's held-out pairs", _pct),
    "client_global_accuracy": ("Global model, users' own test pairs", _pct),
    "personal_accuracy": ("Personalised models, users' own test pairs", _pct),
    "bayes_accuracy": ("Best possible per-user predictor (Bayes optimum)", _pct),
    "population_utility_accuracy": ("Best single preference shared by all users", _pct),
    "attack_success_rate": ("Attack success rate (trigger pairs flipped)", _pct),
    "attackers_dropped_per_round": ("Attackers left out, per round", _num),
    "bytes_up": ("Sent by the devices", _mb),
    "bytes_down": ("Sent to the devices", _mb),
    "seconds": ("Wall time", _duration),
}
"""report.json's ``final`` keys shown in report.md's results table, with their labels and units."""

_SHOWN_ELSEWHERE = {"epsilon", "delta", "epsilon_kind", "bayes_by_archetype", "timing"}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _results_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    final = report["final"]
    rows = []
    initial = (report.get("initial") or {}).get("global_accuracy")
    warm = report.get("warm_start") or {}
    if warm.get("accuracy") is not None:
        rows.append(("Public warm start (not private), held-out public pairs", _pct(warm["accuracy"])))
    if initial is not None:
        before = "after the public warm start, before round 1" if warm else "before training"
        rows.append((f"Global model {before}, server's held-out pairs", _pct(initial)))
    for key, (label, fmt) in FINAL_ROWS.items():
        if final.get(key) is not None or key == "global_accuracy":
            rows.append((label, fmt(final.get(key))))
    if final.get("epsilon") is not None:
        kind = {"user": "per user", "record": "per device's records"}.get(final.get("epsilon_kind") or "", "")
        rows.append(
            (  # a device's own policy may spend epsilon when the run's privacy settings are off
                f"Privacy spent {kind}".strip(),
                f"epsilon {final['epsilon']:.2f}"
                + ("" if final.get("delta") is None else f", delta {final['delta']:g}"),
            )
        )
    fed = report.get("federated_evaluation") or {}
    for key, label in (("global_accuracy", "global model"), ("personal_accuracy", "personalised models")):
        if fed.get(key) is not None:
            rows.append((f"Final check on {fed.get('clients')} sampled users, {label}", _pct(fed[key])))
    for key, value in final.items():  # keys added after this table was written
        if key not in FINAL_ROWS and key not in _SHOWN_ELSEWHERE and value is not None:
            rows.append((key.replace("_", " ").capitalize(), _num(value)))
    return rows


def _round_note(row: dict[str, Any]) -> str:
    notes = [f"{n} {_words(kind)}" for kind, n in (row.get("failures") or {}).items() if n]
    if row.get("dropped"):
        notes.append(f"{len(row['dropped'])} left out")
    if row.get("refused"):
        notes.append(f"model kept: {row['refused']}")
    return "; ".join(notes)


def _rounds_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    return [
        (
            str(r["round"]),
            _pct(r.get("global_accuracy")),
            _pct(r.get("personal_accuracy")),
            "–" if r.get("epsilon") is None else f"{r['epsilon']:.2f}",
            f"{r.get('clients_ok', '–')} of {r.get('clients_sampled', '–')}",
            _mb(r.get("bytes_up")).removesuffix(" MB"),
            _mb(r.get("bytes_down")).removesuffix(" MB"),
            f"{r.get('seconds') or 0:.1f}",
            _round_note(r),
        )
        for r in report["rounds"]
    ]


def _archetype_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    by_type = report["final"].get("bayes_by_archetype") or {}
    minority = (report.get("cohort") or {}).get("minority_archetype")
    from fedrlhf.simulation.cohorts import ARCHETYPES

    names = list(ARCHETYPES)
    minority_name = names[minority] if isinstance(minority, int) and 0 <= minority < len(names) else None
    return [
        (name + (" (minority)" if name == minority_name else ""), _pct(acc)) for name, acc in by_type.items()
    ]


def _deployed(report: dict[str, Any]) -> bool:
    """A deployment (``prepare-cohort=false``): no simulated cohort behind the report."""
    return not report.get("cohort")


def _device_lines(report: dict[str, Any]) -> list[str]:
    """Per round: which devices failed and why, and every node the identification query left
    out; a deployment also lists who was asked, who answered and the epsilon each device has spent."""
    lines, deployed = [], _deployed(report)
    for r in report["rounds"]:
        for event in r.get("identification") or []:
            if deployed or event.get("failed"):
                lines.append(
                    f"- Before round {r['round']}: {event.get('online')} node(s) online of "
                    f"{event.get('expected')} expected; identified: {_num(event.get('identified'))}"
                )
            failed = event.get("failed", {}).items()
            lines += [f"  - node {node} takes no part: {why}" for node, why in failed]
        if "asked" not in r or not (deployed or r.get("failed")):
            continue
        lines.append(f"- Round {r['round']}: asked {_num(r['asked'])}; answered {_num(r.get('answered'))}")
        spent = r.get("epsilon_by_device") or {}
        if spent:  # each device's ledger total as it reported it
            lines.append("  - epsilon spent so far: " + ", ".join(f"{d} {e:.2f}" for d, e in spent.items()))
        lines += [f"  - {device} failed: {why}" for device, why in (r.get("failed") or {}).items()]
    return ["", "## Devices", "", *lines] if lines else []


def markdown(report: dict[str, Any]) -> str:
    """report.md: a paragraph on what ran and what came out, then tables and the plots."""
    lines = [
        f"# fedrlhf {'federation' if _deployed(report) else 'simulation'} report",
        "",
        _summary(report),
        "",
        _accuracy_words(report.get("config", {})),
        "",
        "![accuracy per round](accuracy.png)",
        "",
        "## Results",
        "",
        *_table(("Measure", "Value"), _results_rows(report)),
    ]
    archetypes = _archetype_rows(report)
    if archetypes:
        lines += [
            "",
            "## Best possible accuracy by user type",
            "",
            "Users grouped by the preference archetype that dominates their taste; the Bayes optimum "
            "is the accuracy of a model that knows each user's true preferences.",
            "",
            *_table(("Dominant archetype", "Bayes-optimal accuracy"), archetypes),
        ]
    lines += [
        "",
        "## Rounds",
        "",
        *_table(
            tuple(_ROUND_COLUMNS.split("|")),
            _rounds_rows(report),
        ),
        "",
        "![privacy spent and data sent per round](privacy_bytes.png)",
        *_device_lines(report),
        "",
        'All settings of this run are in report.json under "config".',
    ]
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
