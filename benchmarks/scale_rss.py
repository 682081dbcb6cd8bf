"""Wall time and peak memory of a `fedrlhf simulate` run: the scale runs' figures.

    python benchmarks/scale_rss.py --name scale-1k --config simulations/scale-1k.toml
    python benchmarks/scale_rss.py --name scale-100 --config simulations/scale-1k.toml \\
        --set cohort.num_clients=100

Every argument it does not know itself goes to ``fedrlhf simulate``: it runs
``fedrlhf simulate ARGS --out RUN_DIR`` (default ``runs/NAME``; its log in ``RUN_DIR.log``)
and samples, every ``--every`` seconds, the resident memory (RSS) of the simulate process (the
driver) and of all its descendants (Ray's processes and workers) together. Writes
``OUT/NAME.rss.json`` (command, exit code, seconds, peak total and driver RSS in MB, the
samples) and copies the run's ``report.json`` beside it as ``OUT/NAME.report.json``; prints
one line. RSS counts shared pages once per process, so the total overstates what the machine
spends (an upper bound). Memory that does not grow with the clients that are not sampled
shows as equal peaks for cohorts of different sizes with the same clients per round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "scale"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="the run's name: OUT/NAME.rss.json, OUT/NAME.report.json")
    p.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    p.add_argument("--run-dir", type=Path, default=None, help="the run's folder (default runs/NAME)")
    p.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    args, args.simulate = p.parse_known_args(argv)
    if not args.simulate:
        p.error("give fedrlhf simulate's arguments (e.g. --config FILE); --out is this script's")
    return args


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of ``proc`` and all its descendants, RSS of ``proc``) in bytes; gone processes count 0."""
    try:
        own = proc.memory_info().rss
        children = proc.children(recursive=True)
    except psutil.Error:
        return 0, 0
    total = own
    for child in children:
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total, own


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run_dir = args.run_dir or REPO / "runs" / args.name
    if run_dir.exists():
        sys.exit(f"scale_rss: {run_dir} exists (a run there would resume): remove it or pick another --name")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_name(run_dir.name + ".log")
    cmd = [str(Path(sys.executable).parent / "fedrlhf"), "simulate", *args.simulate, "--out", str(run_dir)]
    start = time.monotonic()
    samples: list[tuple[float, int]] = []
    peak = peak_driver = 0
    with open(log, "w") as out, subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=out) as child:
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            total, own = tree_rss(proc)
            samples.append((round(time.monotonic() - start, 1), total))
            peak, peak_driver = max(peak, total), max(peak_driver, own)
            time.sleep(args.every)
    seconds = time.monotonic() - start
    result = {
        "cmd": cmd,
        "rc": child.returncode,
        "seconds": seconds,
        "peak_rss_mb": peak / 2**20,
        "peak_driver_rss_mb": peak_driver / 2**20,
        "samples": samples,
    }
    (args.out / f"{args.name}.rss.json").write_text(json.dumps(result) + "\n")
    if child.returncode != 0:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        print(f"{args.name}: fedrlhf simulate failed with exit code {child.returncode}", file=sys.stderr)
        return 1
    shutil.copy(run_dir / "report.json", args.out / f"{args.name}.report.json")
    final = json.loads((run_dir / "report.json").read_text())["final"]
    print(
        f"{args.name}: {seconds:.0f} s, peak RSS {peak / 2**20:,.0f} MB all processes "
        f"({peak_driver / 2**20:,.0f} MB the driver), global accuracy {final.get('global_accuracy')}, "
        f"epsilon {final.get('epsilon')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
