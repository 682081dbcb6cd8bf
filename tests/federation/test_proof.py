"""Plain mode's client clipping and the rejections that prove an attacker (no Flower run needed)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrlhf.aggregation import clip_named, clip_to_norm
from fedrlhf.config import run_config_from_dict
from fedrlhf.errors import ConfigError
from fedrlhf.federation.aggregate import proven_attackers


def _named(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}


def test_clip_named_scales_all_arrays_by_one_factor_like_the_flat_vector() -> None:
    named = _named(np.random.default_rng(0))
    flat = np.concatenate([v.ravel() for v in named.values()])
    clipped = clip_named(named, max_norm=1.0)
    got = np.concatenate([v.ravel() for v in clipped.values()])
    np.testing.assert_allclose(got, clip_to_norm(flat, max_norm=1.0), rtol=1e-6)
    assert np.linalg.norm(got.astype(np.float64)) <= 1.0 * (1 + 1e-6)
    assert {k: v.dtype for k, v in clipped.items()} == {k: v.dtype for k, v in named.items()}
    assert {k: v.shape for k, v in clipped.items()} == {k: v.shape for k, v in named.items()}
    inside = clip_named(named, max_norm=1e6)  # already within the bound: unchanged
    for key in named:
        np.testing.assert_array_equal(inside[key], named[key])


def test_clip_named_refuses_a_bad_bound() -> None:
    with pytest.raises(ValueError, match="max_norm"):
        clip_named(_named(np.random.default_rng(1)), max_norm=0.0)


def _cfg(**robust: object) -> object:
    return run_config_from_dict({"robust": {"rule": "coordinate_median", "num_malicious": 2, **robust}})


def test_only_rejections_no_honest_client_can_cause_count_as_proof() -> None:
    failures = {"error": 4, "withheld": 1, "non_finite": 1, "shape": 1, "norm": 2, "norm_ratio": 3}
    # without client clipping an honest update may exceed max_update_norm: not proof
    assert proven_attackers(failures, _cfg(max_update_norm=10.0)) == 2
    # with it, no honest update is above the bound: proof; dropouts, withheld, norm ratio never
    assert proven_attackers(failures, _cfg(client_clip_norm=1.0)) == 4
    # a reply the client app never sends (a record missing, undecodable arrays) is proof too
    assert proven_attackers({**failures, "malformed": 2}, _cfg(max_update_norm=10.0)) == 4
    secure = run_config_from_dict(
        {
            "robust": {"rule": "coordinate_median", "num_malicious": 1},
            "secagg": {"enabled": True, "min_group_size": 2},
            "federation": {"clients_per_round": 8},
        }
    )
    assert proven_attackers({"group_rejected": 2, "norm": 5, "error": 1}, secure) == 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"robust": {"client_clip_norm": -1.0}}, "robust.client_clip_norm"),
        ({"robust": {"client_clip_norm": 5.0, "max_update_norm": 2.0}}, "would reject honest clipped"),
        (
            {
                "robust": {"client_clip_norm": 5.0},
                "secagg": {"enabled": True, "min_group_size": 2},
                "federation": {"clients_per_round": 8},
            },
            "secagg.clip_norm",
        ),
    ],
)
def test_client_clip_norm_config_errors_say_what_to_do(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_config_from_dict(settings)
