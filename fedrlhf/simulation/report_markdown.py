"""report.md: the summary paragraph (``report_text``), the results and rounds tables, the devices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedrlhf.simulation.report_text import (
    _accuracy_words,
    _deployed,
    _duration,
    _mb,
    _num,
    _pct,
    _summary,
    _words,
)

_ROUND_COLUMNS = "Round|Global|Personal|Epsilon|Devices replied|Up (MB)|Down (MB)|Time (s)|Notes"


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
        dissent = len(row.get("dissenters") or [])  # robust.drop_dissenters
        notes.append(f"{len(row['dropped'])} left out" + (f" ({dissent} agreeing least)" if dissent else ""))
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
