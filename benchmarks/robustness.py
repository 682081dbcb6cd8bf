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
import functools
import json
import math
import os
import re
import sys
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from common import HH_DEV, REPO  # noqa: E402
from heldout import accuracy, backdoor_trigger, difference, lift, score_cell  # noqa: E402

ATTACKS: dict[str, str] = {  # name -> attack.params of its row
    "none": "",
    "label_flip": "",
    "backdoor": "",
    "sign_flip": "scale=4.0",
    "gaussian_noise": "",
    "alie": "",
    "ipm": "",
    "min_max": "",
    "sybil_clones": "",
}
DEFENCES = [
    "mean",
    "coordinate_median",
    "trimmed_mean",
    "krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
    "dnc",
    "cosine_filter",
    "cosine_two_sided",
    "secure+coordinate_median",
    "secure+dnc",
    "secure+cosine_filter",
    "secure+trimmed_mean",
    "secure+geometric_median",
]
LABELS = {
    "mean": "FedAvg",
    "coordinate_median": "median",
    "trimmed_mean": "trimmed mean",
    "krum": "Krum",
    "multi_krum": "Multi-Krum",
    "bulyan": "Bulyan",
    "geometric_median": "RFA (geo. median)",
    "centered_clipping": "centered clipping",
    "norm_bound": "norm bound",
    "dnc": "DnC",
    "cosine_filter": "cosine filter",
    "cosine_two_sided": "two-sided cosine",
}
SECURE = "secure+"
ORACLE = "oracle"  # the reference cell: FedAvg over the honest clients only (attack.oracle)
# Settings a run fills in itself: ignored when checking that a finished cell matches this grid.
_RUN_FILLED = {("federation", "clients_dir"), ("federation", "test_data")}


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


# ---------------------------------------------------------------- the grid


def parse_attacks(spec: str) -> dict[str, str]:
    """``"a,b:k=v;k=v"`` -> {row: params}; ``none`` first. A row is the attack's name, or
    ``name[params]`` where its params differ from the grid's default for it (so one grid can
    hold e.g. ``sign_flip`` (scale 4) and ``sign_flip[scale=1.0]``)."""
    from fedrlhf.simulation.attacks import ATTACKS as REGISTRY

    rows = {"none": ""}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, params = item.partition(":")
        if name != "none" and name not in REGISTRY:
            sys.exit(f"unknown attack {name!r}; choose from {sorted(REGISTRY)}")
        params = params or ATTACKS.get(name, "")
        rows[name if params == ATTACKS.get(name, "") else f"{name}[{params}]"] = params
    return rows


def attack_name(row: str) -> str:
    """The attack a row runs (``sign_flip[scale=1.0]`` -> ``sign_flip``)."""
    return row.split("[", 1)[0]


def parse_defences(spec: str) -> list[str]:
    from fedrlhf.aggregation.rules import RULES

    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item.removeprefix(SECURE) not in RULES:
            sys.exit(f"unknown defence {item!r}; a rule of {sorted(RULES)}, optionally {SECURE}RULE")
        out.append(item)
    return out


def label(defence: str) -> str:
    if defence == ORACLE:
        return "oracle (FedAvg, honest only)"
    rule = defence.removeprefix(SECURE)
    name = LABELS.get(rule, rule)
    return f"secure + {name}" if defence.startswith(SECURE) else name


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The base config as nested tables, with the command line's overrides."""
    with open(args.config, "rb") as f:
        data = tomllib.load(f)
    if args.cohort == "hh":
        if not HH_DEV.is_file():
            sys.exit(f"{HH_DEV} not found: the HH cohort needs ../shared/data beside the repository")
        cohort = data.setdefault("cohort", {})
        for key in ("pairs_per_user", "test_pairs_per_user", "alpha", "minority_share"):
            cohort.pop(key, None)
        cohort.update(
            kind="jsonl", data=str(HH_DEV), partition="iid", test_fraction=0.2, client_test_fraction=0.0
        )
    if args.backbone:
        data.setdefault("model", {})["backbone"] = args.backbone
    if args.rounds:
        data.setdefault("federation", {})["rounds"] = args.rounds
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            sys.exit(f"--set {item!r}: expected section.key=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        section, name = key.strip().split(".", 1)
        data.setdefault(section, {})[name] = value
    return data


def cell_config(base: dict[str, Any], attack: str, params: str, defence: str) -> Any:
    """The RunConfig of one cell (raises ConfigError where the combination is impossible)."""
    from fedrlhf.config import run_config_from_dict

    data = {k: dict(v) for k, v in base.items()}
    data.setdefault("attack", {}).update(name=attack_name(attack), params=params, oracle=defence == ORACLE)
    robust = data.setdefault("robust", {})
    robust["rule"] = "mean" if defence == ORACLE else defence.removeprefix(SECURE)
    from fedrlhf.aggregation.rules import OUTLIER_RULES

    if robust["rule"] not in OUTLIER_RULES:  # a --set robust.outlier_z is for the cosine columns
        robust.pop("outlier_z", None)
    data.setdefault("secagg", {})["enabled"] = defence.startswith(SECURE)
    return run_config_from_dict(data)


def cell_dir(out: Path, attack: str, params: str, defence: str) -> Path:
    attack = attack_name(attack)
    name = attack + (f"[{params}]" if params != ATTACKS.get(attack, "") else "")
    return out / "cells" / re.sub(r"[^A-Za-z0-9_.=+\-\[\]]", "_", f"{name}__{defence}")


@functools.cache
def _defaults() -> dict[str, dict[str, Any]]:
    from fedrlhf.config import RunConfig

    return json.loads(json.dumps(RunConfig().to_dict()))


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config without run-filled settings and without settings at their default: a record
    written before a setting existed lacks it, and means its default."""
    defaults = _defaults()

    def keep(s: str, k: str, v: Any) -> bool:
        return (s, k) not in _RUN_FILLED and (k not in defaults.get(s, {}) or v != defaults[s][k])

    return {s: {k: v for k, v in t.items() if keep(s, k, v)} for s, t in config.items()}


def _same_config(report: dict[str, Any], cfg: Any) -> bool:
    want = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as report.json holds them
    return _comparable(report.get("config", {})) == _comparable(want)


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    final = report["final"]
    acc, asr = final.get("global_accuracy"), final.get("attack_success_rate")
    failures: dict[str, int] = {}
    for row in report["rounds"]:
        for reason, count in (row.get("failures") or {}).items():
            failures[reason] = failures.get(reason, 0) + int(count)
    return {
        "status": "ok",
        "accuracy": acc,
        "attack_success_rate": asr,
        "initial_accuracy": (report.get("initial") or {}).get("global_accuracy"),
        "accuracy_per_round": [r.get("global_accuracy") for r in report["rounds"]],
        "attackers": len(report.get("cohort", {}).get("attackers", [])),
        "failures": {k: v for k, v in failures.items() if v},
        "seconds": final.get("seconds"),
        "attackers_dropped_per_round": final.get("attackers_dropped_per_round"),
    }


def run_cell(cfg: Any, run_dir: Path, workers: int | None) -> dict[str, Any]:
    from fedrlhf.simulation.run import run_simulation

    report_path = run_dir / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        if not _same_config(report, cfg):
            sys.exit(f"{run_dir} holds a finished run with other settings; use another --out")
        return {**summarize(report), "cached": True}
    report = run_simulation(cfg, run_dir, workers=workers, progress=False)
    return {**summarize(report), "cached": False}


def clean_trigger_success(run_dir: Path, backdoor_cfg: Any) -> float:
    """Backdoor success of a clean cell's final model on the triggered held-out pairs (cached)."""
    path = run_dir / "trigger_reference.json"
    if path.is_file():
        return float(json.loads(path.read_text())["attack_success_rate"])
    import dataclasses

    from safetensors.numpy import load_file

    from fedrlhf.simulation.threats import eval_hook

    fed = dataclasses.replace(backdoor_cfg.federation, test_data=str(run_dir / "server_test.jsonl"))
    hook = eval_hook(dataclasses.replace(backdoor_cfg, federation=fed))
    assert hook is not None
    value = float(hook(load_file(str(run_dir / "checkpoint" / "global.safetensors")))["attack_success_rate"])
    path.write_text(json.dumps({"attack_success_rate": value}) + "\n")
    return value


def load_prior(out: Path, ref: Any, overrides: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Finished cells and meta that ``out/results.json`` holds for this very grid (same config, overrides)."""
    path = out / "results.json"
    if not path.is_file():
        return {}, {}
    prior = json.loads(path.read_text())
    same = _comparable(prior.get("config", {})) == _comparable(json.loads(json.dumps(ref.to_dict())))
    if not same or prior.get("meta", {}).get("overrides", []) != overrides:
        return {}, {}
    return {k: c for k, c in prior.get("cells", {}).items() if c.get("status") == "ok"}, prior["meta"]


def one_cell(
    base: dict[str, Any],
    rows: dict[str, str],
    attack: str,
    defence: str,
    out: Path,
    workers: int | None,
    prior: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run (or reload) one cell; "n/a" where the combination cannot run, "error" if it failed."""
    from fedrlhf.errors import ConfigError

    recorded = (prior or {}).get(f"{attack}|{defence}")
    done = (cell_dir(out, attack, rows[attack], defence) / "report.json").is_file()
    if recorded is not None and not done and (attack != "none" or "clean_trigger_success" in recorded):
        return {**recorded, "cached": True, "reused": True}

    try:
        cfg = cell_config(base, attack, rows[attack], defence)
    except ConfigError as exc:  # e.g. Krum over too few secure group means
        return {"status": "n/a", "reason": str(exc)}
    run_dir = cell_dir(out, attack, rows[attack], defence)
    try:
        cell = run_cell(cfg, run_dir, workers)
        trigger = None
        if attack == "none" and "backdoor" in rows:
            bd_cfg = cell_config(base, "backdoor", rows["backdoor"], defence)
            cell["clean_trigger_success"] = clean_trigger_success(run_dir, bd_cfg)
            trigger = backdoor_trigger(bd_cfg)
        elif attack == "backdoor":
            trigger = backdoor_trigger(cfg)
        cell["heldout"] = score_cell(run_dir, cfg, trigger=trigger)
    except ConfigError as exc:
        return {"status": "n/a", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one failed cell must not end the grid
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    return cell


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
