"""The round-0 global model: fresh, a saved reward model, or a public warm start.

:func:`initial_state` is what a fresh run starts from (``run_server`` evaluates it as round 0
and, for a warm start, checkpoints it so that a resumed run never trains it again); for
``dpo`` / ``kto`` it is a fresh policy LoRA.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedrlhf.config import RunConfig
from fedrlhf.errors import ConfigError
from fedrlhf.federation.checkpoint import ServerState


def initial_state(cfg: RunConfig, run_dir: Path | None = None) -> ServerState:
    """Round 0: a fresh model, ``federation.initial_model``, or the public warm start (trained
    here; its record opens ``history`` and its model is kept in ``run_dir/warm_start``); for
    ``dpo`` / ``kto``, a fresh policy LoRA."""
    from fedrlhf.models.reward import RewardModel
    from fedrlhf.models.state import get_trainable_state

    history: list[dict[str, Any]] = []
    if cfg.federation.task != "reward":  # dpo / kto: a fresh policy LoRA (the policy is its base)
        from fedrlhf.training.policy_task import initial_policy_state

        state = initial_policy_state(cfg.policy, seed=cfg.federation.seed)
    elif cfg.federation.initial_model:
        state = initial_model_state(cfg)
    elif cfg.warm_start.data:
        state, record = public_warm_start(cfg, run_dir)
        history.append({"round": 0, "warm_start": record})
    else:
        fresh = RewardModel.build(cfg.model, seed=cfg.federation.seed)  # LoRA B = 0; a zero head if head-only
        state = get_trainable_state(fresh)
    rng = np.random.default_rng(cfg.federation.seed)
    return ServerState(round=0, global_state=state, rng=dict(rng.bit_generator.state), history=history)


WARM_START_DIR = "warm_start"
"""Where a run directory keeps the warm-started model (loadable with ``RewardModel.from_pretrained``)."""


def public_warm_start(cfg: RunConfig, run_dir: Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Train the first global model on ``[warm_start]``'s public data (not private, by design).

    The tokens and frozen features are cached in ``$FEDRLHF_HOME/cache`` (default
    ``~/.fedrlhf``), keyed by the data, tokenizer and backbone, so another run on the same
    public data skips them. Returns (trainable state, the report's record).
    """
    import os

    from fedrlhf.training.warm_start import warm_start

    home = Path(os.environ.get("FEDRLHF_HOME", Path.home() / ".fedrlhf"))
    result = warm_start(
        cfg.warm_start, cfg.model, threads=cfg.train.threads, cache_dir=home / "cache", say=_say
    )
    if run_dir is not None:
        path = run_dir / WARM_START_DIR
        result.model.save_pretrained(path, extra_json={"warm_start.json": result.record})
        result.record["model"] = WARM_START_DIR  # in the run directory
    return result.state, result.record


def _say(line: str) -> None:
    """A progress line for the operator, on stderr (the simulate command's live bar stays below it)."""
    print(f"fedrlhf server: {line}", file=sys.stderr, flush=True)


def initial_model_state(cfg: RunConfig) -> dict[str, np.ndarray]:
    """The trainable state of the saved reward model ``federation.initial_model`` (a warm start).

    Its model settings must be the run's ``[model]`` (same backbone, LoRA layout and head), so
    that its state is exactly the payload layout the devices train.
    """
    from fedrlhf.models.reward import RewardModel
    from fedrlhf.models.state import get_trainable_state

    path = Path(cfg.federation.initial_model)
    saved = RewardModel.from_pretrained(path, personal_adapter=cfg.model.personal_adapter)
    mine = dataclasses.replace(cfg.model, max_length=saved.config.max_length)  # length: no weights
    if saved.config != mine:
        diff = {
            k: (v, getattr(cfg.model, k))
            for k, v in dataclasses.asdict(saved.config).items()
            if k != "max_length" and getattr(cfg.model, k) != v
        }
        raise ConfigError(
            f"federation.initial_model {path} was trained with other model settings "
            f"(saved vs [model]: {diff}); set [model] to match it"
        )
    return get_trainable_state(saved)
