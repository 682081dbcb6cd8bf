"""Server aggregation time per robust rule vs clients per round (n) and update size (d).

    python benchmarks/aggregation_time.py                 # n = 10, 100, 1000; d of head, head-recipe, lora
    python benchmarks/aggregation_time.py --quick --out DIR   # n = 10, 20; d = 64 (a smoke run)

A cell times ``fedrlhf.federation.aggregate.aggregate_updates`` as the server's round calls it
(``step``): the pre-aggregation and rule of a real ``RunConfig``, the rule's parameters derived
from f by ``rule_kwargs``, a ``dropped`` list (so a filtering rule also works out whom it left
out), the previous aggregate as centered clipping's centre (a steady-state round). Inputs: n
float32 updates with pairwise cosine about 0.03 (like real LoRA deltas); f = max(1, n // 10).
Every rule of the registry runs, plus NNM and bucketing (buckets of 2) before --compose-with.
d comes from the real models (``common.MODEL_PRESETS``). Not timed: decoding and validating
each update, the norm-ratio check, the server optimiser step (all O(n d), once per update).

Each (n, d) runs in a worker process capped at --memory-gb of address space (a rule that needs
more fails with MemoryError instead of swapping out the machine). A rule whose first call runs
past --budget seconds ends its worker: the cell says "skipped (over budget)". Otherwise the cell
is the median of up to --repeats calls (fewer when they add up to more than --budget).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODEL_PRESETS, machine, md_table, trainable_size, write_json  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "aggregation-time"
COSINE = 0.03


def combos(compose_with: str) -> list[tuple[str, str]]:
    """(pre-aggregation, rule): every registered rule alone, then NNM and bucketing before one."""
    from fedrlhf.aggregation.rules import REGISTRY

    return [("none", r) for r in REGISTRY] + [("nnm", compose_with), ("bucketing", compose_with)]


def label(pre: str, rule: str) -> str:
    return rule if pre == "none" else f"{pre} + {rule}"


def server_config(pre: str, rule: str, n: int, f: int) -> Any:
    """The run config a server aggregating n updates with this defence would hold."""
    from fedrlhf.config import run_config_from_dict

    robust = {"rule": rule, "num_malicious": f, "pre_aggregation": pre, "bucket_size": 2}
    return run_config_from_dict({"robust": robust, "federation": {"clients_per_round": n}})


# --- the worker: one (n, d), every combo in turn, one JSON line per event on stdout ---


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def honest_updates(n: int, d: int, seed: int) -> list[Any]:
    """n float32 vectors ``mu + s z`` (|mu| = 1) with expected pairwise cosine ``COSINE``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(d).astype(np.float32)
    mu /= np.linalg.norm(mu)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= np.float32(np.sqrt((1 - COSINE) / (COSINE * d)))
    x += mu
    return list(x)


def worker(spec: dict[str, Any]) -> None:
    cap = int(spec["memory_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import numpy as np

    from fedrlhf.errors import FedRLHFError
    from fedrlhf.federation.aggregate import aggregate_updates
    from fedrlhf.federation.checkpoint import ServerState

    n, d, f = spec["n"], spec["d"], spec["f"]
    updates = honest_updates(n, d, seed=n)
    center = np.mean(updates, axis=0).astype(np.float32)  # last round's aggregate, near this one's
    devices = [f"client-{i:05d}" for i in range(n)]
    emit(event="ready")
    for pre, rule in spec["combos"]:
        emit(event="start", pre=pre, rule=rule)
        times: list[float] = []
        try:
            cfg = server_config(pre, rule, n, f)
            while len(times) < spec["repeats"]:
                state = ServerState(round=1, global_state={}, rng={}, robust_center=center)
                rng = np.random.default_rng(len(times))
                start = time.perf_counter()
                aggregate_updates(updates, cfg, state, devices, rng, dropped=[])
                times.append(time.perf_counter() - start)
                if len(times) == 1:
                    emit(event="first", seconds=times[0])
                if sum(times) + times[-1] > spec["budget"]:
                    break
        except MemoryError:
            emit(event="done", pre=pre, rule=rule, skipped=f"over memory cap ({spec['memory_gb']:g} GB)")
            continue
        except FedRLHFError as exc:  # the rule refuses these inputs (e.g. too few for f)
            emit(event="done", pre=pre, rule=rule, skipped=f"refused: {exc}")
            continue
        emit(event="done", pre=pre, rule=rule, times=times)


# --- the parent: workers per (n, d), a deadline per call ---


def _reader(proc: subprocess.Popen, lines: queue.Queue) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def run_size(n: int, size: str, d: int, todo: list[tuple[str, str]], args: argparse.Namespace) -> list[dict]:
    """Every combo at (n, d); a worker that overruns is killed and a new one takes the rest."""
    f = max(1, n // 10)
    base = {"n": n, "d": d, "size": size, "f": f}
    cells: list[dict] = []
    while todo:
        spec = {**base, "combos": todo, "repeats": args.repeats, "budget": args.budget}
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            json.dumps({**spec, "memory_gb": args.memory_gb}),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc, lines), daemon=True).start()
        try:
            ended = _follow(lines, base, cells, args.budget)
        finally:
            proc.kill()
            proc.wait()
        if ended is None:  # the worker never got going: say so for everything left
            why = f"skipped (worker failed before the first rule, exit {proc.returncode})"
            cells += [{**base, "pre": pre, "rule": rule, "skipped": why} for pre, rule in todo]
        done = {(c["pre"], c["rule"]) for c in cells}
        todo = [c for c in todo if c not in done]
    return cells


def _follow(lines: queue.Queue, base: dict[str, Any], cells: list[dict], budget: float) -> bool | None:
    """Record a worker's cells until it ends (True) or overruns (False); None if it never started."""
    deadline, current, started = time.monotonic() + 600, None, False  # start-up: imports, updates
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = "timeout"
        if line is None or line == "timeout":
            if current is None:
                return True if started else None
            why = f"over budget: first call > {budget:g} s" if line else "worker died"
            cells.append({**base, "pre": current[0], "rule": current[1], "skipped": f"skipped ({why})"})
            print(_line(cells[-1]), flush=True)
            return False
        event = json.loads(line)
        if event["event"] == "ready":
            started, deadline = True, time.monotonic() + budget
        elif event["event"] == "start":
            current, deadline = (event["pre"], event["rule"]), time.monotonic() + budget
        elif event["event"] == "first":  # the rest of the calls stop once they add up to the budget
            deadline = time.monotonic() + budget + 5
        elif event["event"] == "done":
            cells.append(_cell(base, event))
            print(_line(cells[-1]), flush=True)
            current, deadline = None, time.monotonic() + budget


def _cell(base: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    cell = {**base, "pre": event["pre"], "rule": event["rule"]}
    if "times" not in event:
        return {**cell, "skipped": event["skipped"]}
    times = event["times"]
    return {
        **cell,
        "seconds_median": statistics.median(times),
        "seconds_min": min(times),
        "repeats": len(times),
    }


def _line(c: dict[str, Any]) -> str:
    what = f"{fmt(c)} (median of {c['repeats']})" if "seconds_median" in c else c["skipped"]
    return f"n={c['n']:5d} {c['size']:12s} d={c['d']:7d} {label(c['pre'], c['rule']):28s} {what}"


def fmt(c: dict[str, Any]) -> str:
    if "seconds_median" not in c:
        return "over budget" if "budget" in c["skipped"] else c["skipped"].split(":")[0]
    s = c["seconds_median"]
    return f"{s * 1e3:.2f} ms" if s < 0.1 else f"{s:.2f} s"


def tables(cells: list[dict[str, Any]], ns: list[int], sizes: dict[str, int]) -> str:
    """One Markdown table per update size: a row per defence, a column per n."""
    out = []
    for size, d in sizes.items():
        rows = []
        for pre, rule in dict.fromkeys((c["pre"], c["rule"]) for c in cells):
            by_n = {c["n"]: c for c in cells if c["size"] == size and (c["pre"], c["rule"]) == (pre, rule)}
            rows.append([label(pre, rule), *(fmt(by_n[n]) if n in by_n else "-" for n in ns)])
        out.append(f"d = {d:,} ({size})\n\n" + md_table(["defence", *(f"n = {n}" for n in ns)], rows))
    return "\n\n".join(out)


def plot(cells: list[dict[str, Any]], sizes: dict[str, int], path: Path) -> bool:
    """Time vs n, log-log, one line per defence, a panel per d; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    combos_seen = list(dict.fromkeys((c["pre"], c["rule"]) for c in cells))
    colours = plt.get_cmap("tab20").colors
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes) + 2.5, 5), squeeze=False)
    for ax, (size, d) in zip(axes[0], sizes.items(), strict=True):
        for i, (pre, rule) in enumerate(combos_seen):
            pts = sorted(
                (c["n"], c["seconds_median"])
                for c in cells
                if c["size"] == size and (c["pre"], c["rule"]) == (pre, rule) and "seconds_median" in c
            )
            if pts:
                style = "--" if pre != "none" else "-"
                ax.plot(
                    *zip(*pts, strict=True), style, marker="o", color=colours[i % 20], label=label(pre, rule)
                )
        ax.set(xscale="log", yscale="log", xlabel="updates per round (n)", ylabel="seconds (median)")
        ax.set_title(f"d = {d:,} ({size})")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 2.3 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", default="10,100,1000", help="updates per round, comma list")
    p.add_argument("--sizes", default="head,head-recipe,lora", help=f"update sizes: {sorted(MODEL_PRESETS)}")
    p.add_argument("--backbone", default="minilm", help="the backbone the sizes are computed from")
    p.add_argument("--compose-with", default="trimmed_mean", help="the rule after NNM and bucketing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=60.0, help="seconds per cell (first call and total)")
    p.add_argument("--memory-gb", type=float, default=10.0, help="address-space cap of a worker")
    p.add_argument("--quick", action="store_true", help="n = 10, 20 and d = 64 (a smoke run)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--replot", metavar="JSON", help="redraw the tables and plot of a saved run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        ns, sizes = saved["settings"]["n"], saved["settings"]["sizes"]
        print(tables(saved["cells"], ns, sizes))
        plot(saved["cells"], sizes, Path(args.replot).with_suffix(".png"))
        return
    try:
        ns = [int(v) for v in args.n.split(",")]
    except ValueError:
        sys.exit(f"--n: expected a comma list of integers, got {args.n!r}")
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if [s for s in names if s not in MODEL_PRESETS]:
        sys.exit(f"--sizes: unknown size(s) {names}; choose from {sorted(MODEL_PRESETS)}")
    if args.quick:
        ns, sizes, args.repeats = [10, 20], {"quick": 64}, 2
    else:
        sizes = {s: trainable_size(s, args.backbone) for s in names}
    todo = combos(args.compose_with)
    info = machine()
    start = time.perf_counter()
    cells = [c for size, d in sizes.items() for n in ns for c in run_size(n, size, d, todo, args)]
    text = tables(cells, ns, sizes)
    print("\n" + text)
    out = Path(args.out)
    settings = {**vars(args), "n": ns, "sizes": sizes, "cosine": COSINE, "f": "max(1, n // 10)"}
    info["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    data = {
        "settings": settings,
        "machine": info,
        "seconds": round(time.perf_counter() - start),
        "cells": cells,
    }
    write_json(out / "aggregation_time.json", data)
    (out / "tables.md").write_text(text + "\n")
    drawn = plot(cells, sizes, out / "aggregation_time.png")
    print(
        f"\nwrote {out}/aggregation_time.json"
        + (", aggregation_time.png" if drawn else " (no matplotlib: no plot)")
    )


if __name__ == "__main__":
    main()
