"""The ServerApp that ``flwr run .`` starts (pyproject ``[tool.flwr.app.components]``).

With ``prepare-cohort = true`` (the default, for ``flwr run . local``) it first
materialises the configured cohort's client directories in ``run-dir`` (the
simulated ClientApps find them through the ``clients-dir`` sent with each
message); with ``prepare-cohort = false`` (a deployment: every SuperNode was
started with ``--node-config "device-dir=..."``) it only runs the rounds.
Either way it writes the same report as ``fedrlhf simulate``.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrlhf.config import run_config_from_dict
from fedrlhf.federation.server import run_server

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Prepare the cohort if asked, run every round, write the report."""
    from fedrlhf.simulation.report import round_line, write_report
    from fedrlhf.simulation.run import prepare_cohort

    config = dict(context.run_config)
    run_dir = Path(str(config.pop("run-dir", "runs/flwr"))).resolve()
    prepare = bool(config.pop("prepare-cohort", True))
    cfg = run_config_from_dict(config)
    start = time.perf_counter()
    info: dict = {}
    if prepare:
        cfg, info = prepare_cohort(cfg, run_dir)
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
