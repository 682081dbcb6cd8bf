"""Shared helpers for benchmarks: the HH dev data and its fixed 80/20 split."""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HH_DEV = REPO.parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"


def hh_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[list, list]:
    """The HH harmless dev pairs split 80/20 (the reference split of every benchmark)."""
    from fedrlhf.feedback import read_feedback, split_records

    if not HH_DEV.is_file():
        sys.exit(f"{HH_DEV} not found: the benchmarks need ../shared/data beside the repository")
    records = read_feedback(HH_DEV).records
    return split_records(records, test_fraction=test_fraction, seed=seed)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- shared by the cost benchmarks (aggregation_time, round_bytes, round_time, dp_overhead) ---

MODEL_PRESETS: dict[str, dict[str, object]] = {
    "head": {"trainable": "head", "pool_layers": 1},
    "head-recipe": {"trainable": "head", "pool_layers": 4},
    "lora": {},
}
"""Trainable layouts the cost tables compare, as ``[model]`` settings over the defaults: the head
alone on the last layer's pooled state, the DP recipe's head (``fedrlhf.config.DP_RECIPE``: the
last 4 layers' pooled states) and the default LoRA model (every linear layer, r = 8, + head)."""


def trainable_size(preset: str, backbone: str = "minilm") -> int:
    """Floats a device sends per round for model ``preset``: the real model's trainable state."""
    from fedrlhf.config import ModelConfig
    from fedrlhf.models import RewardModel
    from fedrlhf.models.state import get_trainable_state

    model = RewardModel.build(ModelConfig(backbone=backbone, **MODEL_PRESETS[preset]), seed=0)  # type: ignore[arg-type]
    return int(sum(v.size for v in get_trainable_state(model).values()))


def machine() -> dict[str, object]:
    """Where a figure was taken: CPU model, cores, 1-minute load, GPU (none on the dev machine)."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "gpu": gpu,
        "python": platform.python_version(),
    }


def write_json(path: str | Path, data: object) -> Path:
    """Write ``data`` as indented JSON, creating the folder; returns the path."""
    import json

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    return out


def md_table(headers: list[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
