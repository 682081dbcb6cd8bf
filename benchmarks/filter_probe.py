"""Which attackers do the filtering rules catch, on real updates, in plain rounds and in secure groups?

Runs one plain cell of the robustness grid (default: backdoor x DnC on the reduced HH
cohort), records the validated updates the server aggregates each round (this script
wraps the server's ``aggregate_updates``; the simulation knows who attacks), then on
those same updates measures, per round:

- how similar honest updates are to each other and attackers to each other (cosine);
- how many attackers DnC (over 50 seeds) and the cosine filter keep in a plain round;
- how well any per-update direction test could tell them apart: each update's cosine to
  the mean of all the other updates (what a server can compute), and the share of
  (honest, attacker) couples in which the attacker's cosine is the lower (an AUC: 1.0
  is perfect separation, 0.5 chance), per round and summed over the rounds (the signal
  a reputation accumulates);
- secure mode offline: the updates clipped to ``secagg.clip_norm`` as the clients do,
  split ``--groupings`` times into ``secagg.num_groups`` random groups (what the server
  sees is each group's mean), and how many groups holding an attacker each filter keeps.

    python benchmarks/filter_probe.py                       # HH backdoor x DnC, ~6 min on 2 CPUs
    python benchmarks/filter_probe.py --cohort synthetic --rule cosine_filter
    python benchmarks/filter_probe.py --rule cosine_filter --set robust.client_clip_norm=6.0 \
        --set robust.outlier_z=3.0 --out benchmarks/results/filter-probe-hh-backdoor-gated

Every round also says what the cosine filter gated by ``robust.outlier_z`` (``GATES``: only
scores that stand out are dropped) would keep, in plain rounds and in the secure groupings:
attackers (tainted group means) kept and honest updates (clean group means) dropped.

Writes ``benchmarks/results/filter-probe-COHORT/{probe.json,probe.md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import robustness as grid  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", choices=("synthetic", "hh"), default="hh")
    p.add_argument("--attack", default="backdoor", help="a data attack (backdoor, label_flip) or none")
    p.add_argument("--rule", default="dnc", help="the rule the recorded run aggregates with")
    p.add_argument("--groupings", type=int, default=300, help="random secure groupings per round")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", default=None, help="default benchmarks/results/filter-probe-COHORT")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override the cell's config"
    )
    return p.parse_args()


def record_run(cfg: Any, run_dir: Path, workers: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the cell, keeping each round's (devices, updates) as the server's rule receives them."""
    import fedrlhf.federation.aggregate as aggregate
    from fedrlhf.simulation.run import run_simulation

    rounds: list[dict[str, Any]] = []
    original = aggregate.aggregate_updates

    def recording(updates, cfg_, state, devices, rng, **kwargs):  # type: ignore[no-untyped-def]
        rounds.append({"round": state.round + 1, "devices": list(devices), "x": np.stack(updates)})
        return original(updates, cfg_, state, devices, rng, **kwargs)

    aggregate.aggregate_updates = recording
    try:
        report = run_simulation(cfg, run_dir, workers=workers, progress=True)
    finally:
        aggregate.aggregate_updates = original
    return rounds, report


def _cosines(x: np.ndarray) -> np.ndarray:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return u @ u.T


def separation_auc(score: np.ndarray, bad: np.ndarray) -> float | None:
    """Share of (honest, attacker) couples whose attacker scores lower (ties count half)."""
    h, a = score[~bad], score[bad]
    if not h.size or not a.size:
        return None
    diff = h[:, None] - a[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


GATES = (0.0, 2.0, 3.0)  # robust.outlier_z values compared (0: the ungated filter, drops f)


def _kept_and_dropped(keep: np.ndarray, bad: np.ndarray) -> list[int]:
    """[attackers kept, honest dropped] by a filter that kept the indices ``keep``."""
    return [int(bad[keep].sum()), int((~bad).sum() - (~bad)[keep].sum())]


def analyse_round(x: np.ndarray, bad: np.ndarray, cfg: Any, groupings: int, seed: int) -> dict[str, Any]:
    from fedrlhf.aggregation import agreement_scores, clip_to_norm, cosine_keep, dnc_keep

    f = cfg.robust.num_malicious
    c = _cosines(x.astype(np.float64))
    iu = np.triu_indices(len(x), 1)
    hh = c[iu][~bad[iu[0]] & ~bad[iu[1]]]
    aa = c[iu][bad[iu[0]] & bad[iu[1]]]
    norms = np.linalg.norm(x, axis=1)
    plain_dnc = [int(bad[dnc_keep(list(x), num_malicious=f, seed=s)].sum()) for s in range(50)]
    plain_cos = int(bad[cosine_keep(list(x), num_malicious=f)].sum())
    rng = np.random.default_rng(seed)
    clipped = np.stack([clip_to_norm(v, max_norm=cfg.secagg.clip_norm) for v in x])
    tainted_total, kept = 0, {"dnc": 0, "cosine_filter": 0}
    gated = {z: np.zeros(2) for z in GATES}
    for t in range(groupings):
        groups = np.array_split(rng.permutation(len(x)), cfg.secagg.num_groups)
        means = [clipped[g].mean(axis=0) for g in groups]
        tainted = np.array([bool(bad[g].any()) for g in groups])
        tainted_total += int(tainted.sum())
        kept["dnc"] += int(tainted[dnc_keep(means, num_malicious=f, seed=t)].sum())
        kept["cosine_filter"] += int(tainted[cosine_keep(means, num_malicious=f)].sum())
        for z in GATES:
            gated[z] += _kept_and_dropped(cosine_keep(means, num_malicious=f, outlier_z=z), tainted)
    loo = agreement_scores(x, clip_median=False)  # the raw updates' cosine to the others' mean
    return {
        "attackers": int(bad.sum()),
        "loo_cos": [float(v) for v in loo],
        "loo_cos_honest": [float(loo[~bad].mean()), float(loo[~bad].std())],
        "loo_cos_attackers": [float(loo[bad].mean()), float(loo[bad].std())] if bad.any() else None,
        "loo_auc": separation_auc(loo, bad),
        "norm_honest_mean": float(norms[~bad].mean()),
        "norm_attackers": [float(v) for v in norms[bad]],
        "cos_honest_mean": float(hh.mean()),
        "cos_honest_sd": float(hh.std()),
        "cos_honest_max": float(hh.max()),
        "cos_attackers_mean": float(aa.mean()) if aa.size else None,
        "plain_attackers_kept": {
            "dnc_mean_over_50_seeds": float(np.mean(plain_dnc)),
            "cosine_filter": plain_cos,
        },
        "secure_tainted_groups_per_round": tainted_total / groupings,
        "secure_tainted_groups_kept": {k: v / groupings for k, v in kept.items()},
        "gated_cosine_filter": {
            str(z): {
                "plain": _kept_and_dropped(cosine_keep(list(x), num_malicious=f, outlier_z=z), bad),
                "secure_per_grouping": [float(v) for v in gated[z] / groupings],
            }
            for z in GATES
        },
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [
        f"# Filter probe: {m['attack']} x {m['rule']}, {m['cohort']} cohort",
        "",
        f"{m['clients']} clients per round, {m['attackers']} attackers, rules told f = {m['f']}; "
        f"final accuracy {m['accuracy']:.3f}, backdoor success "
        + ("–" if m["attack_success_rate"] is None else f"{m['attack_success_rate']:.3f}")
        + f". Secure columns: the same updates clipped to {m['clip_norm']} and averaged in "
        f"{m['groups']} random groups, {m['groupings']} groupings per round.",
        "",
        "| round | cos honest (mean ± sd, max) | cos attackers | plain: attackers DnC keeps (50 seeds) "
        "| plain: cosine filter keeps | secure: groups with an attacker | DnC keeps | cosine filter keeps "
        "| cos to the others' mean: honest / attackers | AUC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rounds"]:
        a, plain, sec = r["cos_attackers_mean"], r["plain_attackers_kept"], r["secure_tainted_groups_kept"]
        cells = [
            str(r["round"]),
            f"{r['cos_honest_mean']:.3f} ± {r['cos_honest_sd']:.3f}, {r['cos_honest_max']:.3f}",
            "–" if a is None else f"{a:.3f}",
            f"{plain['dnc_mean_over_50_seeds']:.2f}",
            str(plain["cosine_filter"]),
            f"{r['secure_tainted_groups_per_round']:.2f}",
            f"{sec['dnc']:.2f}",
            f"{sec['cosine_filter']:.2f}",
            _pm(r["loo_cos_honest"]) + " / " + _pm(r["loo_cos_attackers"]),
            _auc(r["loo_auc"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if all("gated_cosine_filter" in r for r in result["rounds"]):
        lines += [
            "",
            "Cosine filter gated by `robust.outlier_z` (0: ungated, always drops f). Per round: plain, "
            "attackers kept / honest updates dropped; secure, tainted group means kept / clean group "
            "means dropped (mean over the groupings).",
            "",
            "| round | " + " | ".join(f"z = {z:g}: plain | z = {z:g}: secure" for z in GATES) + " |",
            "|---|" + "---|---|" * len(GATES),
        ]
        for r in result["rounds"]:
            g = r["gated_cosine_filter"]
            cells = [str(r["round"])]
            for z in GATES:
                plain, sec = g[str(z)]["plain"], g[str(z)]["secure_per_grouping"]
                cells += [f"{plain[0]} / {plain[1]}", f"{sec[0]:.2f} / {sec[1]:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    if "summed" in result:
        t = result["summed"]
        lines += [
            "",
            f"Cosine to the others' mean summed over the {len(result['rounds'])} rounds (per client, the "
            f"signal a reputation accumulates): honest {_pm(t['honest'])}, attackers {_pm(t['attackers'])}; "
            f"AUC {_auc(t['auc'])}.",
        ]
    return "\n".join(lines) + "\n"


def _pm(mean_sd: list[float] | None) -> str:
    return "–" if mean_sd is None else f"{mean_sd[0]:.3f} ± {mean_sd[1]:.3f}"


def _auc(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def summed_over_rounds(
    rounds: list[dict[str, Any]], rows: list[dict[str, Any]], attackers: set[Any]
) -> dict[str, Any] | None:
    """Per client, the sum of its cosines to the others' mean over the rounds it took part in."""
    total: dict[Any, float] = {}
    for r, row in zip(rounds, rows, strict=True):
        for d, v in zip(r["devices"], row["loo_cos"], strict=True):
            total[d] = total.get(d, 0.0) + v
    score = np.array(list(total.values()))
    bad = np.array([d in attackers for d in total])
    if not bad.any() or bad.all():
        return None
    return {
        "honest": [float(score[~bad].mean()), float(score[~bad].std())],
        "attackers": [float(score[bad].mean()), float(score[bad].std())],
        "auc": separation_auc(score, bad),
    }


def probe_config(args: argparse.Namespace) -> Any:
    """The recorded cell's run config: robustness.toml, the HH reduction, ``--set``."""
    ns = argparse.Namespace(
        config=str(grid.REPO / "simulations" / "robustness.toml"),
        cohort=args.cohort,
        backbone=None,
        rounds=None,
        set=(["cohort.limit=800", "cohort.test_fraction=0.3"] if args.cohort == "hh" else []) + args.set,
    )
    return grid.cell_config(grid.base_config(ns), args.attack, grid.ATTACKS.get(args.attack, ""), args.rule)


def main() -> None:
    args = parse_args()
    out = Path(args.out) if args.out else HERE / "results" / f"filter-probe-{args.cohort}"
    cfg = probe_config(args)
    if cfg.secagg.enabled or args.rule.startswith(grid.SECURE):
        sys.exit("the probe records a plain run (the server must see each update); pass a plain rule")
    run_dir = out / "run"
    if (run_dir / "report.json").exists():
        sys.exit(f"{run_dir} holds an earlier run; remove it or pass another --out")
    rounds, report = record_run(cfg, run_dir, args.workers)
    write_probe(args, cfg, rounds, report, out)


def write_probe(
    args: argparse.Namespace, cfg: Any, rounds: list[dict[str, Any]], report: dict[str, Any], out: Path
) -> None:
    """Analyse the recorded ``rounds`` of the run that wrote ``report``; write probe.json and probe.md."""
    attackers = set(report["cohort"].get("attackers") or [])
    rows = []
    for r in rounds:
        bad = np.array([d in attackers for d in r["devices"]])
        rows.append({"round": r["round"], **analyse_round(r["x"], bad, cfg, args.groupings, seed=r["round"])})
    final = report["final"]
    result = {
        "meta": {
            "cohort": args.cohort,
            "attack": args.attack,
            "rule": args.rule,
            "clients": cfg.federation.clients_per_round,
            "attackers": len(attackers),
            "f": cfg.robust.num_malicious,
            "groups": cfg.secagg.num_groups,
            "clip_norm": cfg.secagg.clip_norm,
            "groupings": args.groupings,
            "accuracy": final["global_accuracy"],
            "attack_success_rate": final.get("attack_success_rate"),
            "dimension": int(rounds[0]["x"].shape[1]) if rounds else None,
        },
        "rounds": rows,
    }
    summed = summed_over_rounds(rounds, rows, attackers)
    if summed is not None:
        result["summed"] = summed
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "probe.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out / 'probe.json'}, {out / 'probe.md'}")


if __name__ == "__main__":
    main()
