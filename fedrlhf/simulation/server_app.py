"""The ServerApp that ``flwr run .`` starts (pyproject ``[tool.flwr.app.components]``).

With ``prepare-cohort = true`` (the default, for ``flwr run . local``) it first
materialises the configured cohort's client directories in ``run-dir`` (the
simulated ClientApps find them through the ``clients-dir`` sent with each
message); with ``prepare-cohort = false`` (a deployment: every SuperNode was
started with ``--node-config "device-dir=..."``) it only runs the rounds.
Either way it writes the same report as ``fedrlhf simulate``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrlhf.config import RunConfig, run_config_from_dict
from fedrlhf.errors import FedRLHFError
from fedrlhf.federation.checkpoint import load_checkpoint
from fedrlhf.federation.server import run_server

app = ServerApp()

APP_KEYS = ("run-dir", "prepare-cohort")
"""Run-config keys of the app itself; every other key is a fedrlhf setting ``section.key``."""


class RunFailed(FedRLHFError):
    """The run stopped on a fedrlhf error (bad settings, a checkpoint of other settings, no device)."""


def settings(run_config: Mapping[str, Any]) -> tuple[RunConfig, Path, bool]:
    """Flower's run config (pyproject defaults fused with ``-c`` overrides) as fedrlhf settings,
    the run directory (absolute) and whether to prepare a simulated cohort."""
    config = dict(run_config)
    run_dir = Path(str(config.pop("run-dir", "runs/flwr"))).resolve()
    prepare = bool(config.pop("prepare-cohort", True))
    return run_config_from_dict(config), run_dir, prepare


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Prepare the cohort if asked, run every round, write the report.

    A fedrlhf error ends the run with one ``fedrlhf ServerApp: error: ...`` line (Flower then
    marks the run ``finished:failed``, which ``flwr ls`` shows).
    """
    try:
        _run(grid, context)
    except FedRLHFError as exc:
        print(f"fedrlhf ServerApp: error: {exc}", file=sys.stderr, flush=True)
        raise RunFailed(str(exc)) from None


def _run(grid: Grid, context: Context) -> None:
    import transformers

    from fedrlhf.simulation.report import round_line, write_report
    from fedrlhf.simulation.run import prepare_cohort

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars on a server's log
    cfg, run_dir, prepare = settings(context.run_config)
    start = time.perf_counter()
    info: dict = {}
    if prepare:
        cfg, info = prepare_cohort(cfg, run_dir)
    done = load_checkpoint(run_dir, cfg)  # refuses a checkpoint of other settings, before any work
    if done is not None:
        print(
            f"resuming {run_dir} after round {done.round} of {cfg.federation.rounds}"
            + (" (nothing left to train)" if done.round >= cfg.federation.rounds else ""),
            flush=True,
        )
    from fedrlhf.simulation.threats import attackers, eval_hook, update_hook

    state = run_server(
        grid,
        cfg,
        run_dir,
        on_round=lambda row: print(round_line(row), flush=True),
        update_hook=update_hook(cfg, set(info.get("attackers", attackers(cfg)))),
        eval_hook=eval_hook(cfg),
    )
    write_report(run_dir, cfg, state, info, seconds=time.perf_counter() - start)
    print(f"run complete: {state.round} rounds; report {run_dir / 'report.md'}", flush=True)
