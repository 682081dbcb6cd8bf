"""Robustness grids over several seeds: mean drop per attack and defence, with its standard error.

    python benchmarks/robustness.py --cohort hh --set cohort.limit=800 --set cohort.test_fraction=0.3 \\
        --set federation.seed=1 --defences mean,cosine_two_sided --out benchmarks/results/robustness-hh-seed1
    python benchmarks/robustness_seeds.py benchmarks/results/robustness-hh \\
        benchmarks/results/robustness-hh-seed1 --out benchmarks/results/robustness-hh-seeds

One grid is one seed (``federation.seed``: it draws the split, the attackers, the model's
initial head and every batch), so a cell's drop from its clean run carries one run's noise,
about 3 points on the reduced HH cohort. This reads the ``results.json`` of grids that differ
only in their seed, recomputes each cell's drop from its own clean cell and the backdoor's lift
from its clean model, and reports per defence the mean over seeds and its standard error
(sample standard deviation / sqrt(seeds)). Grids whose other overrides differ (e.g.
``secagg.clip_norm=6.0``) are kept apart: the defence is labelled with them. Grids of one
seed may hold different defences; one defence needs one grid per seed. Where a grid ran
FedAvg, its oracle cell (FedAvg over the honest clients only, ``attack.oracle``) gives the
floor: what losing the attackers' data costs a perfect filter.

Where some grid of a seed ran clean FedAvg (its ``none|mean`` cell; the grids of one seed
score the same held-out pairs), every defence is also measured against it, the issue's goal:
its clean cost (clean run minus FedAvg's clean run) and each attacked run minus FedAvg's clean
run, so a defence that does not learn cannot pass by never dropping from its own clean run.

Writes ``results.json``, ``table.md`` and ``drops.png`` to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from heldout import accuracy, difference, lift
from robustness import GOAL_DROP, GOAL_LIFT, ORACLE, label, oracle_attack


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grids", nargs="+", help="output folders of benchmarks/robustness.py (one per seed)")
    p.add_argument("--defences", default=None, help="comma-separated defences to report (default: all)")
    p.add_argument("--min-seeds", type=int, default=2, help="report defences run under >= this many seeds")
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args()


def load_grid(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    if not path.is_file():
        sys.exit(f"{path} not found: run benchmarks/robustness.py --out {folder} first")
    data = json.loads(path.read_text())
    overrides = [o for o in data["meta"].get("overrides", []) if not o.startswith("federation.seed=")]
    return {
        "folder": str(folder),
        "seed": data["config"]["federation"]["seed"],
        "setting": tuple(overrides),
        "cells": data["cells"],
        "attacks": data["attacks"],
        "defences": data.get("defences", []),
    }


def fedavg_clean(grids: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per seed, the clean FedAvg cell of any grid of that seed that ran one."""
    found: dict[int, dict[str, Any]] = {}
    for g in grids:
        cell = g["cells"].get("none|mean")
        if accuracy(cell) is not None:
            found.setdefault(g["seed"], cell)
    return found


def vs_fedavg(grid: dict[str, Any], defence: str, reference: dict[str, Any] | None) -> dict[str, float]:
    """One grid's figures for ``defence`` against clean FedAvg of the same seed: ``clean`` (its clean
    run's cost) and each attack's accuracy minus FedAvg's clean accuracy."""
    if reference is None:
        return {}
    out = {}
    for a in grid["attacks"]:
        gap, _ = difference(grid["cells"].get(f"{a}|{defence}"), reference)
        if gap is not None:
            out["clean" if a == "none" else a] = gap
    return out


def per_seed(grid: dict[str, Any], defence: str) -> dict[str, float]:
    """One grid's figures for ``defence``: each attack's drop, the backdoor lift, the clean accuracy
    (on the held-out pairs where the grid scored its cells there, else on the server's test pairs)."""
    cells = grid["cells"]
    clean_cell = cells.get(f"none|{defence}")
    clean = accuracy(clean_cell)
    if clean is None:
        return {}
    out = {"clean": clean}
    for a in grid["attacks"]:
        drop, _ = difference(cells.get(f"{a}|{defence}"), clean_cell)
        if a != "none" and drop is not None:
            out[a] = drop
    bd_lift, _ = lift(cells.get(f"backdoor|{defence}"), clean_cell)
    if bd_lift is not None:
        out["lift"] = bd_lift
    return out


def oracle_drop(grid: dict[str, Any]) -> float | None:
    cells = grid["cells"]
    oracle = cells.get(f"{oracle_attack(list(grid['attacks']))}|{ORACLE}")
    return difference(oracle, cells.get("none|mean"))[0]


def stats(values: list[float]) -> dict[str, Any]:
    k = len(values)
    mean = float(np.mean(values))
    se = float(np.std(values, ddof=1) / math.sqrt(k)) if k > 1 else None
    return {"mean": mean, "se": se, "seeds": k, "values": values}


def summarize(grids: list[dict[str, Any]], wanted: list[str] | None, min_seeds: int) -> dict[str, Any]:
    settings: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    common = set.intersection(*(set(g["setting"]) for g in grids)) if grids else set()
    for g in grids:  # labelled by the overrides that set the grid apart from the others
        settings.setdefault(tuple(o for o in g["setting"] if o not in common), []).append(g)
    rows: list[dict[str, Any]] = []
    floors = []
    fedavg = fedavg_clean(grids)
    for setting, group in settings.items():
        drops = [d for d in (oracle_drop(g) for g in group) if d is not None]
        if drops:
            floors.append({"setting": list(setting), **stats(drops)})
        ran = {k.split("|")[1] for g in group for k in g["cells"]} - {ORACLE}
        listed = [d for g in group for d in g["defences"] if d in ran]
        defences = list(dict.fromkeys([*listed, *sorted(ran)]))  # the grids' column order first
        for d in defences:
            if wanted and d not in wanted:
                continue
            runs = [(g["seed"], per_seed(g, d)) for g in group]
            runs = [(s, r) for s, r in runs if r]
            seeds = [s for s, _ in runs]
            if len(set(seeds)) != len(seeds):  # grids of other defences may share a seed
                where = [g["folder"] for g in group if per_seed(g, d)]
                sys.exit(f"grids {where} all ran {d} with seeds {seeds}; give one grid per seed and defence")
            if len(runs) < min_seeds:
                continue
            present = {k for _, r in runs for k in r}
            keys = [k for k in ("clean", *group[0]["attacks"], "lift") if k in present]
            figures = {k: stats([r[k] for _, r in runs if k in r]) for k in keys}
            attacks = [k for k in figures if k not in ("clean", "lift")]
            worst = min(attacks, key=lambda a: figures[a]["mean"]) if attacks else None
            gaps = [vs_fedavg(g, d, fedavg.get(g["seed"])) for g in group]
            vs = {
                k: stats([r[k] for r in gaps if k in r])
                for k in ("clean", *attacks)
                if any(k in r for r in gaps)
            }
            under = [a for a in vs if a != "clean"]
            worst_vs = min(under, key=lambda a: vs[a]["mean"]) if under else None
            rows.append(
                {
                    "defence": d,
                    "setting": list(setting),
                    "seeds": sorted(s for s, _ in runs),
                    "figures": figures,
                    "largest_mean_drop": None if worst is None else {"attack": worst, **figures[worst]},
                    # against clean FedAvg of the same seed (the goal's reference)
                    "vs_fedavg_clean": vs,
                    "worst_vs_fedavg_clean": None
                    if worst_vs is None
                    else {"attack": worst_vs, **vs[worst_vs]},
                }
            )
    return {"rows": rows, "floors": floors}


def _pts(s: dict[str, Any] | None) -> str:
    if s is None:
        return "–"
    se = "" if s["se"] is None else f" ± {100 * s['se']:.1f}"
    one = " (1 seed)" if s["seeds"] == 1 else ""  # an attack only one of the grids ran
    return f"{100 * s['mean']:+.1f}{se}{one}"


def row_label(row: dict[str, Any]) -> str:
    return label(row["defence"]) + (f" [{', '.join(row['setting'])}]" if row["setting"] else "")


def markdown(summary: dict[str, Any], grids: list[dict[str, Any]]) -> str:
    rows = summary["rows"]
    attacks = [a for a in dict.fromkeys(a for r in rows for a in r["figures"]) if a not in ("clean", "lift")]
    lines = [
        "# Robustness over seeds",
        "",
        "Grids read (folder: seed): " + ", ".join(f"`{g['folder']}`: {g['seed']}" for g in grids) + ".",
        "",
        "Each figure is the mean over seeds ± its standard error, in accuracy points; a drop is a cell's "
        "accuracy minus the same defence's clean run under the same seed, the lift is backdoor success "
        "minus the defence's clean model's success on the same triggered pairs.",
        "",
        "| defence | seeds | clean accuracy | "
        + " | ".join(attacks)
        + " | largest mean drop | backdoor lift |",
        "|---|---|---|" + "---|" * len(attacks) + "---|---|",
    ]
    for r in rows:
        f, worst = r["figures"], r["largest_mean_drop"]
        clean = f["clean"]
        clean_text = f"{clean['mean']:.3f}" + ("" if clean["se"] is None else f" ± {clean['se']:.3f}")
        worst_text = "–" if worst is None else f"**{_pts(worst)}** ({worst['attack']})"
        lines.append(
            f"| {row_label(r)} | {', '.join(map(str, r['seeds']))} | {clean_text} | "
            + " | ".join(_pts(f.get(a)) for a in attacks)
            + f" | {worst_text} | {_pts(f.get('lift'))} |"
        )
    lines += _vs_fedavg_lines(rows)
    for fl in summary["floors"]:
        where = f" [{', '.join(fl['setting'])}]" if fl["setting"] else ""
        lines += [
            "",
            f"Floor{where}: the oracle (FedAvg over the honest clients only, attackers' updates withheld) "
            f"is {_pts(fl)} points from FedAvg's clean run over {len(fl['values'])} seeds "
            f"(per seed: {', '.join(f'{100 * v:+.1f}' for v in fl['values'])}). "
            "A defence that drops exactly the attackers loses about this much.",
        ]
    lines += [
        "",
        "## Against the goal (worst case within 2 points of clean FedAvg, backdoor lift under 5 points)",
        "",
    ]
    for r in rows:
        worst, lift = r["largest_mean_drop"], r["figures"].get("lift")
        if worst is None:
            continue
        lift_ok = lift is not None and lift["mean"] < GOAL_LIFT
        own = f"largest mean drop from its own clean run {_pts(worst)} ({worst['attack']})"
        vs = r.get("worst_vs_fedavg_clean")
        if vs is not None:
            ok = vs["mean"] >= -GOAL_DROP
            head = (
                f"worst case vs clean FedAvg {_pts(vs)} ({vs['attack']}): {'within' if ok else 'NOT within'} "
                f"2 points on average; {own}"
            )
        else:
            ok = worst["mean"] >= -GOAL_DROP
            head = f"{own}: {'within' if ok else 'NOT within'} 2 points (no FedAvg grid of its seeds)"
        lines.append(
            f"- {row_label(r)}: {head}; backdoor lift {_pts(lift)}: {'under' if lift_ok else 'NOT under'} "
            "5 points on average"
        )
    return "\n".join(lines) + "\n"


def _vs_fedavg_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table against clean FedAvg of the same seed: clean cost and each attack's gap."""
    rows = [r for r in rows if r.get("vs_fedavg_clean")]
    if not rows:
        return []
    attacks = [a for a in dict.fromkeys(a for r in rows for a in r["vs_fedavg_clean"]) if a != "clean"]
    lines = [
        "",
        "## Against clean FedAvg of the same seed (accuracy points, mean over seeds ± standard error)",
        "",
        "| defence | clean cost | " + " | ".join(attacks) + " | worst case |",
        "|---|---|" + "---|" * len(attacks) + "---|",
    ]
    for r in rows:
        vs, worst = r["vs_fedavg_clean"], r["worst_vs_fedavg_clean"]
        worst_text = "–" if worst is None else f"**{_pts(worst)}** ({worst['attack']})"
        lines.append(
            f"| {row_label(r)} | {_pts(vs.get('clean'))} | "
            + " | ".join(_pts(vs.get(a)) for a in attacks)
            + f" | {worst_text} |"
        )
    return lines


def plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    attacks = [a for a in dict.fromkeys(a for r in rows for a in r["figures"]) if a != "clean"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(1.0 * len(attacks) + 3, 4.2))
    for j, r in enumerate(rows):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(attacks))]
        f = r["figures"]
        means = [100 * f[a]["mean"] if a in f else np.nan for a in attacks]
        errs = [100 * (f[a]["se"] or 0.0) if a in f else 0.0 for a in attacks]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=row_label(r))
    for fl in summary["floors"]:
        ax.axhline(100 * fl["mean"], color="grey", ls=":", lw=1, label="oracle floor (vs FedAvg clean)")
    ax.axhline(-100 * GOAL_DROP, color="red", ls="--", lw=1, label="goal: -2 points")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("points vs own clean run (lift: backdoor)")
    ax.set_title("Mean over seeds ± standard error", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    grids = sorted((load_grid(Path(g)) for g in args.grids), key=lambda g: (g["setting"], g["seed"]))
    wanted = [d.strip() for d in args.defences.split(",")] if args.defences else None
    summary = summarize(grids, wanted, args.min_seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = [{"folder": g["folder"], "seed": g["seed"], "setting": list(g["setting"])} for g in grids]
    (out / "results.json").write_text(json.dumps({"grids": meta, **summary}, indent=2) + "\n")
    table = markdown(summary, grids)
    (out / "table.md").write_text(table)
    plot(out / "drops.png", summary)
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'drops.png'}")


if __name__ == "__main__":
    main()
