"""Worst case over attacks, per defence (pre-aggregation x rule), on synthetic update vectors.

A rule written ``RULE:z=Z`` runs with ``robust.outlier_z = Z`` (the cosine filters: only
scores that stand out are dropped).

Each cell: n = 15 updates per round, f attackers (3 or 5), honest updates ``mu + noise``
whose pairwise cosine is about 0.03 (like real LoRA deltas) or 0.5, d = 500. The defence
is what the server does (:func:`fedrlhf.simulation.threats.server_view`: its norm-ratio
check, ``robust.pre_aggregation``, ``robust.rule`` with f; no history, so centered clipping
starts from the coordinate median). Every attack, named and adaptive (the adaptive ones tune
against that same server view, white-box), replaces the f attackers' updates; the score is
the relative error of the aggregate, ``|agg - mean(honest)| / |mean(honest)|`` (1.0 = no
progress, what a refused round costs), averaged over ``--seeds`` draws. Reported per defence:
the clean error (no attack: what the defence costs), the worst case over the attacks, and
which attack it was.

``--client-clip R``: every honest client clips its update to R times the honest updates' median
norm before sending it (``robust.client_clip_norm``; on HH, 6.0 against honest norms of 6-7 is
R ~ 1); the attackers do not, and an update above the bound is proof of an attacker (rejected,
counted against f). ``--groups K``: secure mode (``secagg``): the 15 updates fall into K random
groups (sizes 2-3 for K = 7), the server sees only the group means, refuses a mean above the
clip bound (proof), and runs the pre-aggregation and rule over the means, told f groups may be
spoilt; a rule K means cannot support at f is refused as the config refuses it. The attackers
are white-box in both modes: they see every honest update and tune against the server's whole
pipeline, groups included (stronger than the simulation's secure coalition, which sees only
its own honest updates).

    python benchmarks/robust_worst_case.py            # ~30 s on 2 CPUs
    python benchmarks/robust_worst_case.py --quick    # 1 seed, fewer rules
    python benchmarks/robust_worst_case.py --seeds 3 --client-clip 1.0             # plain, clipping
    python benchmarks/robust_worst_case.py --seeds 3 --client-clip 1.0 --groups 7  # secure mode

Writes ``worst_case{-clipR}{-groupsK}.{json,png}`` to ``--out`` (``benchmarks/results/robust-worst-case``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrlhf.aggregation import clip_to_norm, make_groups
from fedrlhf.config import run_config_from_dict
from fedrlhf.errors import ConfigError, FedRLHFError
from fedrlhf.simulation.attacks import UPDATE_ATTACKS
from fedrlhf.simulation.threats import server_view

OUT = Path(__file__).resolve().parent / "results" / "robust-worst-case"
N, D = 15, 500
RULES = [
    "mean",
    "coordinate_median",
    "trimmed_mean",
    "geometric_median",
    "multi_krum",
    "centered_clipping",
    "dnc",
    "cosine_filter",
    "cosine_two_sided",
    "cosine_filter:z=2",  # robust.outlier_z = 2: drop only the scores that stand out
    "cosine_filter:z=3",
    "cosine_two_sided:z=3",
]
QUICK_RULES = ["mean", "coordinate_median", "trimmed_mean", "centered_clipping", "cosine_filter"]
PRE = [("none", 2), ("nnm", 2), ("bucketing", 2)]
# (label, attack name, params); the honest updates the attackers see are the n - f honest ones
ATTACKS: list[tuple[str, str, dict[str, Any]]] = [
    ("sign_flip", "sign_flip", {}),
    ("sign_flip x4", "sign_flip", {"scale": 4.0}),
    ("gaussian", "gaussian_noise", {}),  # std set to the honest updates' below
    ("alie", "alie", {}),
    ("ipm 0.5", "ipm", {"epsilon": 0.5}),
    ("ipm 2", "ipm", {"epsilon": 2.0}),
    ("min_max", "min_max", {}),
    ("min_sum", "min_sum", {}),
    ("sybil", "sybil_clones", {}),
    ("mimic", "mimic", {}),
    ("zeros", "zeros", {}),
    ("alie_opt", "alie_opt", {}),
    ("alie_opt+noise", "alie_opt", {"noise": True}),
    ("ipm_opt", "ipm_opt", {}),
    ("ipm_opt+noise", "ipm_opt", {"noise": True}),
    ("min_max_tailored", "min_max_tailored", {}),
    ("min_sum_tailored", "min_sum_tailored", {}),
]


def honest_updates(cosine: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` vectors ``mu + s * z`` (|mu| = 1) whose expected pairwise cosine is ``cosine``."""
    mu = rng.normal(size=D)
    mu /= np.linalg.norm(mu)
    s = np.sqrt((1 - cosine) / (cosine * D))
    return mu + s * rng.normal(size=(count, D))


def defence(rule: str, pre: str, bucket: int, f: int, clip: float = 0.0, groups: int = 0) -> Any:
    """The run config of one defence: plain (``groups = 0``) or secure over ``groups`` group means;
    ``clip``: the clients' clip bound (0 = off). Raises ConfigError where the config refuses it."""
    rule, _, z = rule.partition(":z=")
    robust: dict[str, Any] = {"rule": rule, "num_malicious": 0 if rule == "mean" else f}
    if z:
        robust["outlier_z"] = float(z)
    robust |= {"pre_aggregation": pre, "bucket_size": bucket}
    data: dict[str, Any] = {"federation": {"clients_per_round": N}, "cohort": {"num_clients": N}}
    if groups:
        secagg = {"enabled": True, "num_groups": groups, "min_group_size": 2}
        data["secagg"] = secagg | {"clip_norm": clip or 1e9}
    elif clip:
        robust["client_clip_norm"] = clip
    return run_config_from_dict(data | {"robust": robust})


def secure_server(cfg: Any, groups: int, rng: np.random.Generator) -> Any:
    """Secure mode as the server runs it: means of ``groups`` random groups (``rng``'s first
    draw), means above ``secagg.clip_norm`` refused on proof, then the plain server view over the rest."""
    split = make_groups(list(range(N)), min_group_size=2, num_groups=groups, rng=rng)
    server, bound = server_view(cfg, rng), cfg.secagg.clip_norm * (1 + 1e-6)

    def aggregator(inputs: list[np.ndarray]) -> np.ndarray:
        x = np.stack([np.asarray(v, dtype=np.float64) for v in inputs])
        means = [x[g].mean(axis=0) for g in split]
        ok = [m for m in means if np.linalg.norm(m) <= bound]
        if not ok:
            raise FedRLHFError("secure view: every group mean was refused")
        return server(ok, known_bad=len(means) - len(ok))

    return aggregator


def relative_error(view: Any, honest: np.ndarray, bad: list[np.ndarray]) -> float:
    """Of the aggregate of ``honest`` and ``bad`` against the mean of ``honest``."""
    target = honest.mean(axis=0)
    try:
        agg = view([*honest, *bad])
    except FedRLHFError:
        return 1.0  # the round is refused: the model does not move
    return float(np.linalg.norm(np.asarray(agg, dtype=np.float64) - target) / np.linalg.norm(target))


def cell(
    spec: tuple[str, str, int], f: int, cosine: float, seeds: int, clip: float = 0.0, groups: int = 0
) -> dict[str, float]:
    """Mean relative error per attack (and ``clean``) for one defence ``(rule, pre, bucket size)``
    and setting; ``clip`` in units of the honest updates' median norm."""
    scores: dict[str, list[float]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng([seed, f, int(cosine * 100)])
        everyone = honest_updates(cosine, N, rng)  # the clean round: n honest clients
        bound = clip * float(np.median(np.linalg.norm(everyone, axis=1))) if clip else 0.0
        if bound:
            everyone = np.stack([clip_to_norm(u, max_norm=bound) for u in everyone])
        honest = everyone[: N - f]  # under attack: f of them replaced
        cfg = defence(*spec, f, bound, groups)
        grid = np.random.default_rng(seed)
        view = secure_server(cfg, groups, grid) if groups else server_view(cfg, grid)
        scores.setdefault("clean", []).append(relative_error(view, everyone, []))
        for label, name, params in ATTACKS:
            p = dict(params)
            if name == "gaussian_noise":
                p["std"] = float(honest.std())
            fn = UPDATE_ATTACKS[name]
            extra = {"aggregator": view} if "aggregator" in inspect.signature(fn).parameters else {}
            bad = fn(list(honest), num_malicious=f, rng=np.random.default_rng(seed + 1), **extra, **p)
            scores.setdefault(label, []).append(relative_error(view, honest, bad))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def run(seeds: int, rules: list[str], clip: float = 0.0, groups: int = 0) -> list[dict[str, Any]]:
    rows = []
    for cosine in (0.03, 0.5):
        for f in (3, 5):
            for pre, bucket in PRE:
                for rule in rules:
                    try:
                        cfg = defence(rule, pre, bucket, f, 1.0 if clip else 0.0, groups)  # refusals
                        errors = cell((rule, pre, bucket), f, cosine, seeds, clip, groups)
                        if errors["clean"] == 1.0 and not groups:  # refused even without attackers
                            view = server_view(cfg, np.random.default_rng(0))
                            view(list(honest_updates(cosine, N, np.random.default_rng(0))))
                    except (ConfigError, FedRLHFError) as exc:  # e.g. too few buckets or groups for f
                        rows.append({"cosine": cosine, "f": f, "pre": pre, "rule": rule, "error": str(exc)})
                        continue
                    attacks = {k: v for k, v in errors.items() if k != "clean"}
                    worst = max(attacks, key=lambda k: attacks[k])
                    row = {"cosine": cosine, "f": f, "pre": pre, "rule": rule, "clean": errors["clean"]}
                    rows.append(row | {"worst": attacks[worst], "worst_attack": worst, "attacks": attacks})
    return rows


def table(rows: list[dict[str, Any]], setting: str = "") -> str:
    lines = [setting] if setting else []
    for cosine in (0.03, 0.5):
        for f in (3, 5):
            sel = sorted(
                (r for r in rows if r["cosine"] == cosine and r["f"] == f and "worst" in r),
                key=lambda r: r["worst"],
            )
            lines.append(f"\nhonest cosine {cosine}, n = {N}, f = {f} (relative error; 1.0 = no progress)")
            lines.append(f"{'pre-aggregation':<16}{'rule':<20}{'clean':>8}{'worst':>9}  worst attack")
            for r in sel:
                lines.append(
                    f"{r['pre']:<16}{r['rule']:<20}{r['clean']:>8.3f}{r['worst']:>9.3f}  {r['worst_attack']}"
                )
            for r in rows:
                if r["cosine"] == cosine and r["f"] == f and "error" in r:
                    lines.append(f"{r['pre']:<16}{r['rule']:<20}  refused: {r['error'][:70]}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 6), sharey=False)
    for ax, (cosine, f) in zip(axes, [(c, f) for c in (0.03, 0.5) for f in (3, 5)], strict=True):
        sel = sorted(
            (r for r in rows if r["cosine"] == cosine and r["f"] == f and "worst" in r),
            key=lambda r: r["worst"],
        )[:15]
        labels = [f"{r['pre']}+{r['rule']}" for r in sel]
        y = np.arange(len(sel))
        ax.barh(y - 0.2, [min(r["worst"], 3.0) for r in sel], 0.4, label="worst case")
        ax.barh(y + 0.2, [min(r["clean"], 3.0) for r in sel], 0.4, label="clean")
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"cosine {cosine}, f = {f} (15 best)")
        ax.set_xlabel("relative error (capped at 3)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2, help="draws per cell (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 seed and 5 rules")
    parser.add_argument(
        "--client-clip",
        type=float,
        default=0.0,
        metavar="R",
        help="honest clients clip to R x the honest median norm; larger updates are proof (default off)",
    )
    parser.add_argument(
        "--groups", type=int, default=0, metavar="K", help="secure mode: the rule over K group means (0: off)"
    )
    parser.add_argument("--out", default=str(OUT), help=f"output folder (default {OUT})")
    args = parser.parse_args()
    if args.client_clip < 0 or args.groups < 0 or args.groups == 1 or args.groups > N // 2:
        parser.error(f"--client-clip must be >= 0; --groups 0 (plain) or 2..{N // 2} (groups of 2 or more)")
    start = time.perf_counter()
    seeds = 1 if args.quick else args.seeds
    rows = run(seeds, QUICK_RULES if args.quick else RULES, args.client_clip, args.groups)
    setting = f"secure mode, the rule over {args.groups} group means" if args.groups else "plain mode"
    setting += f", clients clip to {args.client_clip:g} x the honest median norm" if args.client_clip else ""
    print(table(rows, setting))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "worst_case" + (f"-clip{args.client_clip:g}" if args.client_clip else "")
    name += f"-groups{args.groups}" if args.groups else ""
    meta = {"n": N, "d": D, "seeds": seeds, "client_clip": args.client_clip, "groups": args.groups}
    meta |= {"setting": setting, "seconds": time.perf_counter() - start}
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plot(rows, out / f"{name}.png")
    print(f"\nwrote {out}/{name}.json and {name}.png ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
