"""A robustness cell's final model scored pair by pair on a large held-out set, for paired comparisons.

The simulation evaluates every round on the server's test pairs, which a grid keeps small so
the rounds stay cheap (240 pairs on the reduced HH cohort: 3 points of standard error, more
than the 2-point goal it is judged against). A reduced HH cohort (``cohort.limit``) never
touches the pairs after the limit, so those and the server's test pairs together are the
cell's held-out set: 1,084 pairs for the reduced HH grid (240 + 844). The final model's
verdict on each pair is kept (``1`` right, ``0`` wrong, ``h`` a tie, counted half), so two
cells of one grid, scored on the same pairs, can be compared pair by pair: the standard error
of their difference is that of the per-pair differences, smaller than two independent ones
wherever the models err on the same pairs.

Backdoor cells (and their clean reference) are also scored on the same pairs with the trigger
in the rejected response: the verdict there is ``1`` where the backdoor succeeds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

CACHE = "heldout.json"


def heldout_pairs(run_dir: Path, cfg: Any) -> list[Any]:
    """The server's test pairs of the run in ``run_dir``, plus the pairs its ``cohort.limit`` left out."""
    from fedrlhf.feedback import read_feedback
    from fedrlhf.feedback.records import Preference

    pairs = [r for r in read_feedback(run_dir / "server_test.jsonl").records if isinstance(r, Preference)]
    c = cfg.cohort
    if c.kind == "jsonl" and c.limit:
        rest = read_feedback(Path(c.data)).records[c.limit :]
        pairs += [r for r in rest if isinstance(r, Preference)]
    return pairs


def verdicts(margins: np.ndarray, *, wins_if_negative: bool = False) -> str:
    """Per pair ``1`` / ``0`` / ``h`` (tie) for margins r(chosen) - r(rejected)."""
    m = -margins if wins_if_negative else margins
    return "".join("1" if v > 0 else "0" if v < 0 else "h" for v in m)


def rate(bits: str) -> float:
    """The share of ``1`` verdicts, a tie counted half."""
    return (bits.count("1") + 0.5 * bits.count("h")) / len(bits)


def _values(bits: str) -> np.ndarray:
    return np.array([1.0 if b == "1" else 0.0 if b == "0" else 0.5 for b in bits])


def paired(a: str, b: str) -> tuple[float, float]:
    """``rate(a) - rate(b)`` over the same pairs and its standard error (of the per-pair differences)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired comparison needs verdicts on the same pairs, got {len(a)} and {len(b)}")
    d = _values(a) - _values(b)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan


def score_cell(run_dir: Path, cfg: Any, *, trigger: str | None = None) -> dict[str, Any]:
    """Held-out verdicts of the final model in ``run_dir`` (cached in ``run_dir/heldout.json``).

    Returns ``{"pairs", "accuracy", "correct"}`` and, with ``trigger``, ``"trigger_success"`` and
    ``"trigger_wins"``: the backdoor's verdicts on the same pairs with ``trigger`` in the
    rejected response.
    """
    path = run_dir / CACHE
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if "correct" in cached and (trigger is None or "trigger_wins" in cached):
        return cached
    from safetensors.numpy import load_file

    from fedrlhf.models.state import set_trainable_state
    from fedrlhf.simulation.attacks import backdoor_eval_pairs
    from fedrlhf.training.data import encode
    from fedrlhf.training.device import worker_model
    from fedrlhf.training.evaluate import score_pairs

    pairs = heldout_pairs(run_dir, cfg)
    model, _ = worker_model(cfg.model)
    set_trainable_state(model, load_file(str(run_dir / "checkpoint" / "global.safetensors")))
    model.use_personal(False)

    def margins(items: list[Any]) -> np.ndarray:
        return score_pairs(model, encode(items, model.tokenizer, cfg.model.max_length))

    out = dict(cached)
    if "correct" not in out:
        out["correct"] = verdicts(margins(pairs))
        out.update(pairs=len(pairs), accuracy=rate(out["correct"]))
    if trigger is not None:
        triggered = margins(backdoor_eval_pairs(pairs, trigger=trigger))
        out["trigger_wins"] = verdicts(triggered, wins_if_negative=True)
        out["trigger_success"] = rate(out["trigger_wins"])
    path.write_text(json.dumps(out) + "\n")
    return out


def backdoor_trigger(backdoor_cfg: Any) -> str:
    """The trigger a backdoor cell's attackers plant (``backdoor_cfg``: that cell's config)."""
    from fedrlhf.simulation.threats import attack_config

    attack = attack_config(backdoor_cfg)
    return str(attack.params["trigger"]) if attack is not None else backdoor_cfg.attack.trigger


# ---------------------------------------------------------------- comparing two cells of one grid


def accuracy(cell: dict[str, Any] | None) -> float | None:
    """A cell's final accuracy: on the held-out pairs where it was scored there, else the server's."""
    if not cell or cell.get("status") != "ok":
        return None
    held = cell.get("heldout")
    return held["accuracy"] if held else cell.get("accuracy")


def _both(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> tuple[str, str] | None:
    ha, hb = (a or {}).get("heldout") or {}, (b or {}).get("heldout") or {}
    if key in ha and key in hb and len(ha[key]) == len(hb[key]):
        return ha[key], hb[key]
    return None


Cell = dict[str, Any] | None


def difference(cell: Cell, clean: Cell) -> tuple[float | None, float | None]:
    """``cell``'s accuracy minus ``clean``'s and its paired standard error (None unless both were
    scored on the held-out pairs; then the server's figures are compared, without an error)."""
    pair = _both(cell, clean, "correct")
    if pair is not None:
        return paired(*pair)
    x, y = accuracy(cell), accuracy(clean)
    return (None if x is None or y is None else x - y), None


def lift(backdoor: Cell, clean: Cell) -> tuple[float | None, float | None]:
    """Backdoor success minus the clean model's success on the same triggered pairs, and its paired
    standard error (held-out pairs where both cells were scored there, else the server's pairs)."""
    pair = _both(backdoor, clean, "trigger_wins")
    if pair is not None:
        return paired(*pair)
    asr = (backdoor or {}).get("attack_success_rate")
    ref = (clean or {}).get("clean_trigger_success")
    return (None if asr is None or ref is None else asr - ref), None
