"""Robustness grid: attacks x defences, final global accuracy and backdoor success.

    python benchmarks/robustness.py                            # synthetic cohort, full grid (~1.5 min a cell)
    python benchmarks/robustness.py --cohort hh                # HH harmless pairs (../shared/data)
    python benchmarks/robustness.py --cohort hh --set cohort.limit=800 --set cohort.test_fraction=0.3 \\
        --defences mean,coordinate_median,trimmed_mean,krum,bulyan,geometric_median,centered_clipping,dnc,\\
cosine_filter,cosine_two_sided,secure+coordinate_median,secure+cosine_filter
    python benchmarks/robustness.py --attacks backdoor,alie --defences mean,krum,secure+coordinate_median
    python -c "from fedrlhf.models import save_tiny_backbone; save_tiny_backbone('/tmp/rb_tiny')"
    python benchmarks/robustness.py --backbone /tmp/rb_tiny --rounds 1 \\
        --attacks backdoor,sign_flip --defences mean,coordinate_median,secure+coordinate_median \\
        --out /tmp/rb_smoke                                    # smoke run (a few minutes)

Rows are attacks (``none`` is always run: it is every defence's clean reference), columns
are defences: a robust rule (``mean`` is FedAvg) or ``secure+RULE``, the secure + robust
mode (SecAgg+ within random groups, RULE over the group means). The base config is
``simulations/robustness.toml``: 20 % of the clients attack (3 of 15, all of them in every
round), the rules are told f = 3. In plain mode update attacks are omniscient (they replace
the attackers' updates at the server, knowing every honest update); in secure mode, where
nobody sees an honest update, the attackers forge theirs on their devices from their
coalition's own honest updates (``fedrlhf.simulation.threats.forged_update``). A rule the
secure groups cannot support (Krum needs 2f + 3 group means) is "n/a" with the config's reason.
Where FedAvg (``mean``) is a column, one more cell runs the oracle (``attack.oracle``): the
server knows the attackers and withholds their updates, so it averages the honest clients
only. That is the best a defence can do; its gap to FedAvg's clean run is what losing the
attackers' data costs (one cell: with the attackers withheld, every attack gives the same model).

Each cell is a run directory under ``--out``; a cell whose ``report.json`` exists is
not run again, so an interrupted benchmark resumes (an interrupted cell resumes from
its checkpoint). The run directories are not committed: a cell that ``--out``'s
``results.json`` records from an earlier run of the same grid (same base config and
overrides) is reused from there, so adding a column runs only that column.
Writes ``results.json``, ``table.md`` and ``heatmap.png`` to ``--out`` and prints the table.

Backdoor success is the share of the server's held-out pairs on which the rejected
response, with the trigger appended, outscores the chosen one. It includes the model's
ordinary mistakes, so the same triggered pairs are also scored with the defence's clean
model (its ``none`` cell); the lift, success minus that, is the part the backdoor adds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from common import REPO  # noqa: E402
from heldout import accuracy  # noqa: E402
from robustness_cells import (  # noqa: E402
    ATTACKS,
    DEFENCES,
    ORACLE,
    SECURE,
    base_config,
    cell_config,
    label,
    load_prior,
    one_cell,
    parse_attacks,
    parse_defences,
)
from robustness_table import (  # noqa: E402
    GOAL_DROP,  # noqa: F401 - re-exported: robustness_seeds.py imports it from here
    GOAL_LIFT,  # noqa: F401
    _f,
    analyse,
    heatmap,
    markdown,
    oracle_attack,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "simulations" / "robustness.toml"), help="base run config")
    p.add_argument("--cohort", choices=("synthetic", "hh"), default="synthetic")
    p.add_argument("--backbone", default=None, help="model.backbone (default: the config's, MiniLM)")
    p.add_argument("--rounds", type=int, default=None, help="federation.rounds (default: the config's)")
    p.add_argument(
        "--attacks",
        default=",".join(a for a in ATTACKS if a != "none"),
        help="comma-separated attack rows (none is always added); NAME:k=v;k=v sets its params",
    )
    p.add_argument(
        "--defences",
        default=",".join(DEFENCES),
        help=f"comma-separated rules, or {SECURE}RULE for secure aggregation in groups + RULE",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override the base config (value parsed as TOML), repeatable",
    )
    p.add_argument("--workers", type=int, default=None, help="simulation workers (default: CPUs)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/robustness-COHORT)")
    return p.parse_args()


# ---------------------------------------------------------------- main


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rows, defences = parse_attacks(args.attacks), parse_defences(args.defences)
    attacks = list(rows)
    base = base_config(args)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"robustness-{args.cohort}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    ref = cell_config(base, "none", "", "mean")
    per_round = min(ref.federation.clients_per_round, ref.cohort.num_clients)
    meta = {
        "cohort": args.cohort,
        "backbone": ref.model.backbone,
        "clients": ref.cohort.num_clients,
        "per_round": per_round,
        "rounds": ref.federation.rounds,
        "fraction": ref.attack.fraction,
        "attackers": int(round(ref.attack.fraction * ref.cohort.num_clients)),
        "f": ref.robust.num_malicious,
        "groups": ref.secagg.groups_for(per_round),
        "overrides": list(args.set),
    }
    cells: dict[str, dict[str, Any]] = {}
    prior, prior_meta = load_prior(out, ref, meta["overrides"])
    console = Console()

    def save() -> dict[str, Any]:
        summary = analyse(cells, attacks, defences)
        results = {
            "meta": meta,
            "config": ref.to_dict(),
            "attacks": rows,
            "defences": defences,
            # every recorded cell of this grid stays (also those outside --attacks / --defences this
            # time), so an interrupted run, or one that adds a column, loses none
            "cells": {**prior, **cells},
            "summary": summary,
        }
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        return summary

    grid = [(a, d) for a in attacks for d in defences]
    if "mean" in defences and oracle_attack(attacks):  # the floor any defence is measured against
        grid.append((oracle_attack(attacks), ORACLE))
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    ) as bar:
        task = bar.add_task("cells", total=len(grid), info="")
        for a, d in grid:
            key = f"{a}|{d}"
            bar.update(task, info=escape(f"{a} x {label(d)}"))  # a row may read sign_flip[scale=1.0]
            t0 = time.perf_counter()
            cells[key] = one_cell(base, rows, a, d, out, args.workers, prior)
            c = cells[key]
            if c["status"] == "error":
                console.print(f"[red]{escape(a)} x {label(d)} failed: {escape(c['error'])}")
            elif c["status"] == "ok" and not c["cached"]:
                bd = c["attack_success_rate"]
                console.print(
                    f"{escape(a)} x {label(d)}: accuracy {_f(c['accuracy'])}"
                    + ("" if bd is None else f", backdoor success {_f(bd)}")
                    + f" ({time.perf_counter() - t0:.0f} s)"
                )
            save()
            bar.advance(task)
    summary = save()
    clean = cells.get("none|mean") or next((c for k, c in cells.items() if k.startswith("none|")), {})
    test_file = next(iter(sorted((out / "cells").glob("none__*/server_test.jsonl"))), None)
    if test_file is not None:
        meta["test_pairs"] = sum(1 for line in test_file.read_text().splitlines() if line.strip())
    elif "test_pairs" in prior_meta:  # the clean FedAvg cell was reused from results.json
        meta["test_pairs"] = prior_meta["test_pairs"]
    meta["heldout_pairs"] = (clean.get("heldout") or {}).get("pairs")
    meta["clean_accuracy"] = accuracy(clean)
    meta["initial_accuracy"] = clean.get("initial_accuracy")
    summary = save()
    table = markdown(cells, attacks, defences, summary, meta)
    (out / "table.md").write_text(table)
    heatmap(
        out / "heatmap.png",
        cells,
        attacks,
        defences,
        summary,
        f"Final global accuracy, {meta['cohort']} cohort, {100 * meta['fraction']:.0f} % attackers",
    )
    print(table)
    ran = [c["seconds"] for c in cells.values() if c["status"] == "ok" and not c.get("cached")]
    if ran:
        print(
            f"{len(ran)} cells run in {time.perf_counter() - start:.0f} s "
            f"({sum(ran) / len(ran):.0f} s per cell in the simulation)"
        )
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'heatmap.png'}")


if __name__ == "__main__":
    main()
