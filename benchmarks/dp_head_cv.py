"""5-fold cross-validation of a DP linear head on frozen MiniLM features (how DP_RECIPE was chosen).

    python benchmarks/dp_head_cv.py            # ~3 min on 2 cores (features once, then seconds per fold)

All 1,644 HH harmless dev pairs, left-truncated to 128 tokens; each text's mean-pooled states of
every layer are computed once. For each set of layers the head is trained on phi(chosen) -
phi(rejected) with per-pair clipping and full-batch DP-GD (Opacus' RDP accountant picks the noise
for 100 steps at sample rate 1, delta 1e-5), Adam, and scored on the held-out fold.
"""

from __future__ import annotations

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
    x: torch.Tensor, eps: float | None, steps: int = 100, clip: float = 1.0, lr: float = 0.02
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
    w = torch.zeros(d, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        per = -torch.sigmoid(-(x @ w.detach())).unsqueeze(1) * x  # per-pair gradients of -log sigmoid
        per = per * torch.clamp(clip / (per.norm(dim=1, keepdim=True) + 1e-12), max=1.0)
        w.grad = (per.sum(0) + sigma * clip * torch.randn(d, generator=gen)) / n
        opt.step()
    return w.detach()


def main() -> None:
    train, test = hh_split()
    feats = pooled_layers(train + test)
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    rows = []
    for name, layers in LAYER_SETS.items():
        p = feats[:, :, layers].flatten(2)
        x = p[:, 0] - p[:, 1]
        row = {"head input": name}
        for eps in (None, 8.0, 3.0, 1.0):
            accs = []
            for f in range(5):
                held = order[f::5]
                keep = torch.ones(len(x), dtype=torch.bool)
                keep[held] = False
                w = fit(x[keep], eps)
                accs.append(float(((x[held] @ w) > 0).float().mean()))
            row["no DP" if eps is None else f"epsilon {eps:g}"] = round(float(np.mean(accs)), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cv.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {OUT / 'cv.json'}")


if __name__ == "__main__":
    main()
