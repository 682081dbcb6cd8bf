"""5-fold cross-validation of a DP linear head on frozen MiniLM features (how DP_RECIPE was chosen).

    python benchmarks/dp_head_cv.py            # ~3 min on 2 cores (features once, then seconds per fold)
    python benchmarks/dp_head_cv.py --warm runs/warm   # + the recipe's head started from a saved head

All 1,644 HH harmless dev pairs, left-truncated to 128 tokens; each text's mean-pooled states of
every layer are computed once. For each set of layers the head is trained on phi(chosen) -
phi(rejected) with per-pair clipping and full-batch DP-GD (Opacus' RDP accountant picks the noise
for 100 steps at sample rate 1, delta 1e-5), Adam, and scored on the held-out fold (a tie
counts half, as in ``fedrlhf eval``). The head starts at zero, as the recipe's does; with
``--warm DIR`` the last-4-layers head is also started from the head of a saved head-only reward
model (e.g. one trained on public data), and that head untrained is scored too.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import hh_split  # noqa: E402

OUT = Path(__file__).parent / "results" / "dp-head-cv"
LAYER_SETS = {"last": [6], "last 3": [4, 5, 6], "last 4": [3, 4, 5, 6], "all 7": list(range(7))}


@torch.no_grad()
def pooled_layers(records: list) -> torch.Tensor:
    """[N, 2, 7, 384]: each pair's texts, mean-pooled at every layer of MiniLM."""
    from fedrlhf.models.backbone import load_backbone
    from fedrlhf.training.data import batch_tensors, encode

    base, tok = load_backbone("minilm")
    base.eval()
    enc = encode(records, tok, 128)
    out = torch.zeros(len(enc), 2, 7, base.config.hidden_size)
    for s in range(0, len(enc), 64):
        ids, mask = batch_tensors(enc.input_ids[s : s + 64], enc.lengths[s : s + 64])
        for slot in (0, 1):
            states = base(input_ids=ids[:, slot], attention_mask=mask[:, slot], output_hidden_states=True)
            m = mask[:, slot].unsqueeze(-1).float()
            for i, h in enumerate(states.hidden_states):
                out[s : s + 64, slot, i] = (h * m).sum(1) / m.sum(1).clamp(min=1)
    return out


def fit(
    x: torch.Tensor,
    eps: float | None,
    steps: int = 100,
    clip: float = 1.0,
    lr: float = 0.02,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    from opacus.accountants.utils import get_noise_multiplier

    n, d = x.shape
    sigma = (
        0.0
        if eps is None
        else get_noise_multiplier(
            target_epsilon=eps, target_delta=1e-5, sample_rate=1.0, steps=steps, accountant="rdp"
        )
    )
    w = (torch.zeros(d) if start is None else start.clone()).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        per = -torch.sigmoid(-(x @ w.detach())).unsqueeze(1) * x  # per-pair gradients of -log sigmoid
        per = per * torch.clamp(clip / (per.norm(dim=1, keepdim=True) + 1e-12), max=1.0)
        w.grad = (per.sum(0) + sigma * clip * torch.randn(d, generator=gen)) / n
        opt.step()
    return w.detach()


def accuracy(x: torch.Tensor, w: torch.Tensor) -> float:
    """Pairwise accuracy of the head ``w`` on differences ``x``; a tie counts half."""
    s = x @ w
    return float(((s > 0).float() + 0.5 * (s == 0).float()).mean())


def warm_head(path: Path) -> torch.Tensor:
    """The weight vector of a saved head-only reward model's head (its bias cancels in a pair)."""
    from safetensors.torch import load_file

    return load_file(str(path / "head.safetensors"))["weight"].flatten()


def cv_row(name: str, x: torch.Tensor, order: torch.Tensor, start: torch.Tensor | None) -> dict:
    row: dict = {"head input": name}
    for eps in ("untrained", None, 8.0, 3.0, 1.0):
        accs = []
        for f in range(5):
            held = order[f::5]
            keep = torch.ones(len(x), dtype=torch.bool)
            keep[held] = False
            if eps == "untrained":
                w = torch.zeros(x.shape[1]) if start is None else start
            else:
                w = fit(x[keep], eps, start=start)  # type: ignore[arg-type]
            accs.append(accuracy(x[held], w))
        key = eps if eps == "untrained" else "no DP" if eps is None else f"epsilon {eps:g}"
        row[str(key)] = round(float(np.mean(accs)), 4)
        row[f"{key} fold SE"] = round(float(np.std(accs, ddof=1) / np.sqrt(len(accs))), 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warm", type=Path, help="a saved head-only reward model (4 pooled layers)")
    args = parser.parse_args()
    train, test = hh_split()
    feats = pooled_layers(train + test)
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    rows = []
    sets = [(name, layers, None) for name, layers in LAYER_SETS.items()]
    if args.warm:
        sets.append(("last 4, warm start", LAYER_SETS["last 4"], warm_head(args.warm)))
    for name, layers, start in sets:
        p = feats[:, :, layers].flatten(2)
        rows.append(cv_row(name, p[:, 0] - p[:, 1], order, start))
        print(json.dumps(rows[-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cv.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {OUT / 'cv.json'}")


if __name__ == "__main__":
    main()
