import math

import pytest
import torch

from fedrlhf.models.losses import LOSSES, bradley_terry, dpo, rating_logistic


def test_bradley_terry_matches_hand_computed_values() -> None:
    margin = torch.tensor([0.0, 1.0, -2.0])
    expected = [math.log(2.0), math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(2.0))]
    assert bradley_terry(margin).tolist() == pytest.approx(expected, rel=1e-6)


def test_rating_loss_uses_label_and_reference_point() -> None:
    reward = torch.tensor([2.0, 2.0, 0.5])
    label = torch.tensor([1.0, -1.0, 1.0])
    out = rating_logistic(reward, label, reference=0.5)
    expected = [math.log(1 + math.exp(-1.5)), math.log(1 + math.exp(1.5)), math.log(2.0)]
    assert out.tolist() == pytest.approx(expected, rel=1e-6)


def test_dpo_matches_hand_computed_value() -> None:
    out = dpo(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )
    assert out.item() == pytest.approx(math.log(1 + math.exp(-1.0)), rel=1e-6)


def test_losses_are_per_sample_and_registered() -> None:
    assert bradley_terry(torch.zeros(5)).shape == (5,)
    assert set(LOSSES) == {"bradley_terry", "rating_logistic", "dpo", "kto"}
