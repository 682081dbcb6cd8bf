"""The robustness grid's summary (benchmarks/robustness.py): per-defence analysis, the goal
check, the markdown table and the heatmap."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from heldout import accuracy, difference, lift
from robustness_cells import ORACLE, SECURE, label

# ---------------------------------------------------------------- the table


def oracle_attack(attacks: list[str]) -> str | None:
    """The row the oracle cell runs under: any attack gives the same model (its attackers are
    withheld), so one cell serves them all; label flipping if the grid has it."""
    rows = [a for a in attacks if a != "none"]
    return "label_flip" if "label_flip" in rows else (rows[0] if rows else None)


def oracle_summary(cells: dict[str, dict[str, Any]], attacks: list[str]) -> dict[str, Any] | None:
    """The oracle cell against FedAvg's clean run: what losing the attackers' data costs."""
    attack = oracle_attack(attacks)
    c = cells.get(f"{attack}|{ORACLE}")
    if accuracy(c) is None:
        return None
    drop, se = difference(c, cells.get("none|mean"))
    return {"attack": attack, "accuracy": accuracy(c), "drop_vs_fedavg_clean": drop, "drop_se": se}


def _lift(cells: dict[str, dict[str, Any]], defence: str) -> float | None:
    """Backdoor success of ``defence`` minus its clean model's success on the same triggered pairs."""
    return lift(cells.get(f"backdoor|{defence}"), cells.get(f"none|{defence}"))[0]


def _success(cell: dict[str, Any]) -> float | None:
    """A backdoor cell's attack success (held-out pairs where it was scored there); None for others."""
    if cell.get("attack_success_rate") is None:
        return None
    return (cell.get("heldout") or {}).get("trigger_success", cell["attack_success_rate"])


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pts(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def analyse(cells: dict[str, dict[str, Any]], attacks: list[str], defences: list[str]) -> dict[str, Any]:
    """Per defence: clean accuracy, worst case over attacks, largest drop, backdoor success."""
    per: dict[str, Any] = {}
    for d in defences:
        clean_cell = cells.get(f"none|{d}")
        clean = accuracy(clean_cell)
        ran = {a: cells[f"{a}|{d}"] for a in attacks if cells.get(f"{a}|{d}", {}).get("status") == "ok"}
        attacked = {a: accuracy(c) for a, c in ran.items() if a != "none" and accuracy(c) is not None}
        worst = min(attacked, key=attacked.get) if attacked else None  # type: ignore[arg-type]
        paired = {a: difference(ran[a], clean_cell) for a in attacked} if clean is not None else {}
        drops = {a: v for a, (v, _) in paired.items() if v is not None}
        bd = ran.get("backdoor", {})
        bd_lift, bd_se = lift(bd, clean_cell)
        initial = cells.get(f"none|{d}", {}).get("initial_accuracy")
        per[d] = {
            "clean_accuracy": clean,
            "initial_accuracy": initial,
            # a rule whose clean run does not beat the untrained model "survives" attacks by not learning
            "learns": None if clean is None or initial is None else clean > initial,
            "worst_attack": worst,
            "worst_accuracy": attacked.get(worst) if worst else None,
            "max_drop": min(drops.values()) if drops else None,  # most negative = largest drop
            "drops": drops,
            # paired standard errors (held-out pairs): None where a cell was scored on the server's only
            "drop_se": {a: se for a, (_, se) in paired.items() if se is not None},
            "backdoor_success": _success(bd) if bd else None,
            "backdoor_clean": (clean_cell or {})
            .get("heldout", {})
            .get("trigger_success", (clean_cell or {}).get("clean_trigger_success")),
            "backdoor_lift": bd_lift,
            "backdoor_lift_se": bd_se,
            "attacks_run": sorted(attacked),
        }

    def best(mode: list[str]) -> str | None:
        scored = [d for d in mode if per[d]["worst_accuracy"] is not None]
        if not scored:
            return None
        # ties on the worst case go to the smaller largest drop
        return max(scored, key=lambda d: (per[d]["worst_accuracy"], per[d]["max_drop"] or 0.0))

    plain = [d for d in defences if not d.startswith(SECURE)]
    secure = [d for d in defences if d.startswith(SECURE)]
    return {
        "per_defence": per,
        "best_plain": best(plain),
        "best_secure": best(secure),
        "oracle": oracle_summary(cells, attacks),
    }


def markdown(
    cells: dict[str, dict[str, Any]],
    attacks: list[str],
    defences: list[str],
    summary: dict[str, Any],
    meta: dict[str, Any],
) -> str:
    per = summary["per_defence"]
    head = "| attack | " + " | ".join(label(d) for d in defences) + " |"
    rule = "|---|" + "---|" * len(defences)

    def cell_text(a: str, d: str) -> str:
        c = cells.get(f"{a}|{d}")
        if c is None:
            return "–"
        if c["status"] != "ok":
            return "n/a" if c["status"] == "n/a" else "error"
        text = _f(accuracy(c))
        if _success(c) is not None:
            text += f" / BD {_f(_success(c), 2)} ({_pts(_lift(cells, d))})"
        return text

    lines = [
        f"# Robustness grid: {meta['cohort']} cohort",
        "",
        f"{meta['clients']} clients, {meta['per_round']} per round, {meta['rounds']} rounds, "
        f"{meta['attackers']} attackers ({100 * meta['fraction']:.0f} %), rules told f = {meta['f']}; "
        f"backbone `{meta['backbone']}`. Secure columns: SecAgg+ in {meta['groups']} random groups, "
        "the rule over the group means."
        + (
            " Base config overridden with " + ", ".join(f"`{o}`" for o in meta["overrides"]) + "."
            if meta.get("overrides")
            else ""
        ),
        "",
        *_resolution(meta),
        "## Final global accuracy (backdoor row: accuracy / BD backdoor success (lift over clean, points))",
        "",
        head,
        rule,
    ]
    lines += [f"| {a} | " + " | ".join(cell_text(a, d) for d in defences) + " |" for a in attacks]
    lines.append(
        "| **worst case** | "
        + " | ".join(
            f"**{_f(per[d]['worst_accuracy'])}** ({per[d]['worst_attack']})"
            if per[d]["worst_attack"]
            else "–"
            for d in defences
        )
        + " |"
    )
    lines += ["", "## Drop vs the defence's own clean run (accuracy points ± paired standard error)", ""]
    lines += [head, rule]

    def drop_text(d: str, a: str) -> str:
        se = per[d]["drop_se"].get(a)
        return _pts(per[d]["drops"].get(a)) + ("" if se is None else f" ± {100 * se:.1f}")

    for a in attacks:
        if a == "none":
            continue
        lines.append(f"| {a} | " + " | ".join(drop_text(d, a) for d in defences) + " |")
    lines.append(
        "| **largest drop** | " + " | ".join(f"**{_pts(per[d]['max_drop'])}**" for d in defences) + " |"
    )
    fedavg_clean = per.get("mean", {}).get("clean_accuracy")
    if fedavg_clean is not None:
        lines.append(
            "| clean vs FedAvg clean | "
            + " | ".join(
                _pts(None if per[d]["clean_accuracy"] is None else per[d]["clean_accuracy"] - fedavg_clean)
                for d in defences
            )
            + " |"
        )
    lines += _oracle_lines(summary.get("oracle"), meta)
    lines += _filtered_lines(cells, attacks, defences)
    lines += ["", "## Goal check", ""]
    lines += _goal_lines(per, summary)
    reasons: dict[str, list[str]] = {}
    for key, c in cells.items():
        if c["status"] == "n/a":
            a, d = key.split("|")
            reasons.setdefault(c["reason"], []).append(f"{a} x {label(d)}")
    errors = [f"{k.replace('|', ' x ')}: {c['error']}" for k, c in cells.items() if c["status"] == "error"]
    if reasons or errors:
        lines += ["", "## Cells not run", ""]
        lines += [f"- n/a ({why}): {', '.join(where)}" for why, where in reasons.items()]
        lines += [f"- error: {e}" for e in errors]
    lines += [
        "",
        "Backdoor success (BD) counts held-out pairs whose triggered rejected response outscores the "
        "chosen one; it includes the model's ordinary errors, so the lift is BD minus the same figure "
        "for the defence's clean model (row none; "
        + ", ".join(
            f"{label(d)} {_f(per[d]['backdoor_clean'], 3)}"
            for d in defences
            if per[d]["backdoor_clean"] is not None
        )
        + ").",
    ]
    return "\n".join(lines) + "\n"


def _oracle_lines(oracle: dict[str, Any] | None, meta: dict[str, Any]) -> list[str]:
    """The floor: FedAvg over the honest clients only, the attackers known and their updates withheld."""
    if oracle is None:
        return []
    honest = meta["clients"] - meta["attackers"]
    return [
        "",
        "## The floor: FedAvg over the honest clients only",
        "",
        f"With `attack.oracle` the server knows the {meta['attackers']} attackers and withholds their "
        f"updates, so every round averages the {honest} honest clients (one run, under "
        f"{oracle['attack']}: with the attackers withheld every attack gives the same model). It reaches "
        f"**{_f(oracle['accuracy'])}**, {_pts(oracle['drop_vs_fedavg_clean'])}"
        + ("" if oracle.get("drop_se") is None else f" ± {100 * oracle['drop_se']:.1f}")
        + " points against FedAvg's "
        "clean run: what losing the attackers' data (and one run's noise) costs. A defence that "
        "drops exactly the attackers and averages the rest lands here.",
    ]


def _filtered_lines(cells: dict[str, dict[str, Any]], attacks: list[str], defences: list[str]) -> list[str]:
    """Per cell of a filtering rule: how many attackers it left out in each round (from the run's report)."""
    found = []
    for a in attacks:
        for d in defences:
            c = cells.get(f"{a}|{d}", {})
            per_round = c.get("attackers_dropped_per_round")
            if per_round is not None and c.get("attackers"):
                shown = ", ".join(str(k) for k in per_round)
                rejected = (c.get("failures") or {}).get("group_rejected")
                more = f" ({rejected} group means rejected on proof over the run)" if rejected else ""
                found.append(f"- {a} x {label(d)}: {shown} of {c['attackers']}{more}")
    if not found:
        return []
    head = "## Attackers left out, per round (secure: left out with their group)"
    note = (
        "Left out: rejected on proof before the rule (secure mode: a group whose mean no clipped "
        "updates can have, since an update attacker skips the clipping; plain mode with "
        "`robust.client_clip_norm`: an update above the clients' clip bound), by the norm-ratio "
        "check, or dropped by a filtering rule. Grids recorded before rejected groups were listed "
        "count only the rule's drops."
    )
    return ["", head, "", *found, "", note]


def _resolution(meta: dict[str, Any]) -> list[str]:
    """How finely a cell's accuracy is measured: its binomial standard error on the held-out pairs."""
    n, p = meta.get("heldout_pairs") or meta.get("test_pairs"), meta.get("clean_accuracy")
    if not n or p is None:
        return []
    se = math.sqrt(p * (1 - p) / n)
    where = (
        f"the same {n} held-out pairs (the server's {meta.get('test_pairs')} test pairs and the "
        f"{n - (meta.get('test_pairs') or 0)} the cohort's limit left unused), scored after the run"
        if meta.get("heldout_pairs")
        else f"the same {n} held-out pairs"
    )
    paired = (
        "; each drop carries its paired standard error (of the per-pair differences of the two "
        "models' verdicts): it measures the evaluation's noise, not the run-to-run noise of "
        "training, which only more seeds measure"
        if meta.get("heldout_pairs")
        else ""
    )
    return [
        f"Each accuracy is measured on {where}: one standard error is {100 * se:.1f} points (at "
        f"a clean accuracy of {p:.3f}), so a difference between two cells has a standard error of "
        f"about {100 * se * math.sqrt(2):.1f} points (less for runs that err on the same pairs)"
        f"{paired}. The model before training scores {_f(meta.get('initial_accuracy'))} on the "
        "server's test pairs.",
        "",
    ]


GOAL_DROP, GOAL_LIFT = 0.02, 0.05  # issue 5: within 2 accuracy points of clean; backdoor under 5 %


def meets_goal(s: dict[str, Any]) -> tuple[bool, bool]:
    """(largest drop within 2 points of the defence's own clean run, backdoor lift under 5 points).

    The lift (success minus the clean model's success on the same triggered pairs) is what the
    backdoor adds; the raw success also counts the model's ordinary errors on those pairs.
    """
    drop_ok = s["max_drop"] is not None and s["max_drop"] >= -GOAL_DROP
    lift_ok = s["backdoor_lift"] is not None and s["backdoor_lift"] < GOAL_LIFT
    return drop_ok, lift_ok


def _goal_lines(per: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    out = []
    for mode, key in (("plain", "best_plain"), ("secure + robust", "best_secure")):
        d = summary[key]
        if d is None:
            out.append(f"- {mode}: no defence ran under attack")
            continue
        s = per[d]
        drop_ok, _ = meets_goal(s)
        bd = s["backdoor_success"]
        bd_text = (
            "backdoor not run"
            if bd is None
            else f"backdoor success {_f(bd, 3)}, lift {_pts(s['backdoor_lift'])} points"
        )
        out.append(
            f"- {mode}: best by worst case is **{label(d)}** (worst {_f(s['worst_accuracy'])} under "
            f"{s['worst_attack']}, largest drop {_pts(s['max_drop'])} points: "
            f"{'within' if drop_ok else 'NOT within'} 2 points of its clean run; {bd_text}; "
            f"attacks run: {', '.join(s['attacks_run'])})"
        )
    both = [d for d in per if all(meets_goal(per[d]))]
    learners = [d for d in both if per[d].get("learns") is not False]
    idle = [d for d in both if per[d].get("learns") is False]
    out.append(
        "- meet both parts of the goal (largest drop within 2 points of their own clean run, backdoor "
        "lift under 5 points) and learn (clean run above the untrained model): "
        + (", ".join(f"**{label(d)}** (clean {_f(per[d]['clean_accuracy'])})" for d in learners) or "none")
    )
    if idle:
        out.append(
            "- pass both parts only by not learning (clean run at or below the untrained model's "
            f"{_f(per[idle[0]]['initial_accuracy'])}): "
            + ", ".join(f"{label(d)} (clean {_f(per[d]['clean_accuracy'])})" for d in idle)
        )
    if "mean" in per and per["mean"]["max_drop"] is not None:
        s = per["mean"]
        out.append(
            f"- FedAvg: largest drop {_pts(s['max_drop'])} points (worst {_f(s['worst_accuracy'])} under "
            f"{s['worst_attack']}, clean {_f(s['clean_accuracy'])})"
        )
    return out


def heatmap(
    path: Path,
    cells: dict[str, dict[str, Any]],
    attacks: list[str],
    defences: list[str],
    summary: dict[str, Any],
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    per = summary["per_defence"]
    rows = [*attacks, "worst case"]
    acc = np.full((len(rows), len(defences)), np.nan)
    for j, d in enumerate(defences):
        for i, a in enumerate(attacks):
            c = cells.get(f"{a}|{d}", {})
            if accuracy(c) is not None:
                acc[i, j] = accuracy(c)
        if per[d]["worst_accuracy"] is not None:
            acc[-1, j] = per[d]["worst_accuracy"]
    finite = acc[np.isfinite(acc)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    cmap = matplotlib.colormaps["RdYlGn"].copy()
    cmap.set_bad("#d0d0d0")
    fig, ax = plt.subplots(figsize=(1.25 * len(defences) + 2.5, 0.62 * len(rows) + 2.2))
    im = ax.imshow(np.ma.masked_invalid(acc), cmap=cmap, vmin=min(lo, hi - 0.05), vmax=hi, aspect="auto")
    for i, a in enumerate(rows):
        for j, d in enumerate(defences):
            c = cells.get(f"{a}|{d}", {})
            if np.isfinite(acc[i, j]):
                text = f"{acc[i, j]:.3f}"
                if a == "worst case":
                    text += f"\n{per[d]['worst_attack']}"
                elif _success(c) is not None:
                    text += f"\nBD {_success(c):.2f} ({_pts(_lift(cells, d))})"
            else:
                text = {"n/a": "n/a", "error": "error"}.get(c.get("status", ""), "")
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.axhline(len(attacks) - 0.5, color="black", lw=1.5)
    ax.set_xticks(
        range(len(defences)),
        [label(d).replace(" + ", " +\n") for d in defences],
        rotation=35,
        ha="right",
        fontsize=8,
    )
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="final global accuracy", shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
