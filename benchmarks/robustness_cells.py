"""The robustness grid's cells (benchmarks/robustness.py): rows and columns, each cell's run
config, and running, reloading or reusing a cell."""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from common import HH_DEV
from heldout import backdoor_trigger, score_cell

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
