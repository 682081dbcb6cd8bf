import numpy as np
import pytest
import torch

from fedrlhf.config import ModelConfig, TrainConfig
from fedrlhf.errors import ConfigError, TrainingDiverged
from fedrlhf.feedback import Rating
from fedrlhf.models import RewardModel, get_trainable_state
from fedrlhf.training import encode, evaluate, train
from fedrlhf.training.evaluate import expected_calibration_error, metrics_from_margins
from fedrlhf.training.local import make_loader, run_loop
from tests.helpers import synthetic_pairs


def _setup(backbone: str, records: list, **kw):
    model = RewardModel.build(ModelConfig(backbone=backbone, max_length=32, **kw), seed=0)
    return model, encode(records, model.tokenizer, 32)


def test_training_changes_lora_and_keeps_base_bit_identical(tiny_bert: str, pairs: list) -> None:
    model, data = _setup(tiny_bert, pairs)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = get_trainable_state(model)
    train(model, data, TrainConfig(epochs=1, batch_size=16, lr=1e-2), progress=False)
    after = get_trainable_state(model)
    unchanged = [n for n in lora if np.array_equal(lora[n], after[n])]
    assert unchanged == ["head.bias"]  # the bias cancels in r_chosen - r_rejected: zero gradient
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n


def test_tiny_model_learns_synthetic_preference(tiny_bert: str) -> None:
    model, data = _setup(tiny_bert, synthetic_pairs(160, seed=0))
    test = encode(synthetic_pairs(64, seed=1), model.tokenizer, 32)
    train(model, data, TrainConfig(epochs=3, batch_size=16, lr=1e-2), progress=False)
    result = evaluate(model, test)
    assert result.accuracy >= 0.95, result


def test_ratings_alone_train_the_model(tiny_bert: str) -> None:
    prefs = synthetic_pairs(80, seed=3)
    ratings = [Rating(p.prompt, p.chosen, 1) for p in prefs] + [
        Rating(p.prompt, p.rejected, -1) for p in prefs
    ]
    model, data = _setup(tiny_bert, ratings)
    train(model, data, TrainConfig(epochs=3, batch_size=16, lr=1e-2), progress=False)
    test = encode(synthetic_pairs(64, seed=4), model.tokenizer, 32)
    assert evaluate(model, test).accuracy >= 0.95


def test_gradient_accumulation_counts_steps(tiny_bert: str, pairs: list) -> None:
    model, data = _setup(tiny_bert, pairs)
    result = train(model, data, TrainConfig(epochs=1, batch_size=8, grad_accumulation=3), progress=False)
    assert result.steps == 4 and result.units_seen == 96


def test_same_seed_same_model(tiny_bert: str, pairs: list) -> None:
    states = []
    for _ in range(2):
        model, data = _setup(tiny_bert, pairs)
        train(model, data, TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=5), progress=False)
        states.append(get_trainable_state(model))
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])


def test_metrics_by_hand() -> None:
    r = metrics_from_margins(np.array([1.0, -1.0, 0.0, 2.0]))
    assert r.accuracy == 0.625 and r.pairs == 4 and r.mean_margin == 0.5
    # perfectly calibrated: confidence 0.5 at margin 0, and always-right large margins
    assert expected_calibration_error(np.array([50.0, 50.0])) < 1e-6
    assert abs(expected_calibration_error(np.array([-50.0])) - 1.0) < 1e-6


def test_reward_model_judge_flags_feedback_the_trained_model_disputes(tiny_bert: str) -> None:
    from fedrlhf.feedback import Preference
    from fedrlhf.feedback.quality import RewardModelJudge, filter_feedback
    from fedrlhf.training.evaluate import pair_scorer

    model, data = _setup(tiny_bert, synthetic_pairs(160, seed=0))
    train(model, data, TrainConfig(epochs=3, batch_size=16, lr=1e-2), progress=False)
    good = synthetic_pairs(6, seed=8)
    flipped = [Preference(p.prompt, p.rejected, p.chosen) for p in synthetic_pairs(6, seed=9)]
    result = filter_feedback(good + flipped, [RewardModelJudge(pair_scorer(model), min_margin=-1.0)])
    assert {d.index for d in result.flagged} == set(range(6, 12))  # flagged for review, not dropped
    assert len(result.kept) == 12


def test_non_finite_weights_after_a_step_stop_training(tiny_bert: str, pairs: list) -> None:
    model, data = _setup(tiny_bert, pairs)
    config = TrainConfig(epochs=1, batch_size=16)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=float("nan"))  # step 1's loss is finite, its weights are not
    with pytest.raises(TrainingDiverged, match="at step 1: a trainable weight is nan or inf") as info:
        loader = make_loader([data.input_ids, data.lengths, data.kind, data.label], 16, 0)
        run_loop(model, loader, optimizer, config, steps=3, progress=False)
    assert info.value.step == 1


def test_learning_rate_beyond_float32_is_a_config_error(tiny_bert: str, pairs: list) -> None:
    model, data = _setup(tiny_bert, pairs)
    with pytest.raises(ConfigError, match="too large for float32"):
        train(model, data, TrainConfig(epochs=1, batch_size=16, lr=1e39), progress=False)


def test_non_finite_loss_stops_training(tiny_bert: str, pairs: list) -> None:
    model, data = _setup(tiny_bert, pairs)
    with pytest.raises(TrainingDiverged, match=r"at step \d+: loss is (nan|inf); lower the learning rate"):
        train(model, data, TrainConfig(epochs=3, batch_size=16, lr=1e30), progress=False)


def test_evaluate_refuses_a_batch_size_below_one(tiny_bert: str, pairs: list) -> None:
    model, data = _setup(tiny_bert, pairs[:4])
    for size in (0, -1):
        with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
            evaluate(model, data, batch_size=size)
