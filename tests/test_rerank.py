"""Best-of-n reranking: `fedrlhf rerank` (given and generated candidates) and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedrlhf.cli import main
from fedrlhf.config import ModelConfig
from fedrlhf.errors import DataError
from fedrlhf.models import RewardModel
from fedrlhf.rerank import Ranked, rank, read_candidates, reward_input, score
from tests.cli.test_errors import one_error_line

HH = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: how do I cook rice?\n\nAssistant:"
ANSWERS = ["Rinse it, then simmer 15 minutes.", "  No.  ", "", "Go away."]


@pytest.fixture(scope="module")
def reward_dir(tiny_bert: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rm") / "rm"
    RewardModel.build(ModelConfig(backbone=tiny_bert, max_length=48), seed=3).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    from fedrlhf.models.tiny import save_tiny_causal_lm

    return str(save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "llama"))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _eval_margins(reward_dir: Path, data: Path, tmp_path: Path) -> list[float]:
    per_pair = tmp_path / "margins.jsonl"
    assert (
        main(["eval", "--model", str(reward_dir), "--data", str(data), "--json", "--per-pair", str(per_pair)])
        == 0
    )
    return [row["margin"] for row in _lines(per_pair)]


def test_scores_match_eval_for_hh_prefixes_and_plain_prompts(reward_dir: Path, tmp_path: Path) -> None:
    a, b = ANSWERS[0], ANSWERS[1]
    hh_pairs = [(a, b), (ANSWERS[2], ANSWERS[3]), (ANSWERS[3], ANSWERS[0])]
    pairs = _jsonl(
        tmp_path / "pairs.jsonl",
        [{"chosen": f"{HH} {x}", "rejected": f"{HH} {y}"} for x, y in hh_pairs]
        + [{"prompt": "Human: tell me about chess", "chosen": a, "rejected": b}],
    )
    margins = _eval_margins(reward_dir, pairs, tmp_path)
    cands = _jsonl(
        tmp_path / "cands.jsonl",
        [{"prompt": HH + " ", "candidates": list(p)} for p in hh_pairs]
        + [{"prompt": "Human: tell me about chess", "candidates": [a, b]}],
    )
    out = tmp_path / "ranked.jsonl"
    assert (
        main(["rerank", "--reward-model", str(reward_dir), "--candidates", str(cands), "--out", str(out)])
        == 0
    )
    rows = _lines(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    got = [r["scores"][0] - r["scores"][1] for r in rows]
    np.testing.assert_allclose(got, margins, rtol=1e-5, atol=1e-6)


def test_output_lines_name_the_best_candidate(reward_dir: Path, tmp_path: Path, capsys) -> None:
    cands = _jsonl(
        tmp_path / "c.jsonl",
        [{"prompt": "q1", "candidates": ANSWERS[:1]}, {"prompt": HH, "candidates": ANSWERS}],
    )
    assert main(["rerank", "--reward-model", str(reward_dir), "--candidates", str(cands)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(rows[0]) == {"index", "scores", "best"}
    assert [len(r["scores"]) for r in rows] == [1, 4]
    assert all(r["best"] == int(np.argmax(r["scores"])) for r in rows)


def test_python_api_ranks_like_the_scores(reward_dir: Path) -> None:
    model = RewardModel.from_pretrained(reward_dir)
    [ranked] = rank(model, [HH], [ANSWERS])
    direct = score(model, [(HH, c) for c in ANSWERS])
    np.testing.assert_allclose(ranked.scores, direct, rtol=1e-6)
    assert ranked.order[0] == ranked.best == int(np.argmax(direct))
    assert sorted(ranked.order) == [0, 1, 2, 3]
    assert reward_input(HH + "  ", "  x ") == (HH, "x")
    assert reward_input(HH, "") == (HH, "(no response)")
    assert reward_input("plain", " x ") == ("plain", " x ")
    assert Ranked([1.0, 3.0, 3.0], best=1).order == [1, 2, 0]


def test_generated_candidates_best_of_n(reward_dir: Path, tiny_lm: str, tmp_path: Path) -> None:
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "tell me about the moon"}, {"prompt": HH}])
    out = tmp_path / "out.jsonl"
    args = ["rerank", "--reward-model", str(reward_dir), "--prompts", str(prompts), "--policy", tiny_lm]
    assert main([*args, "-n", "3", "--max-new-tokens", "6", "--out", str(out)]) == 0
    rows = _lines(out)
    assert [r["prompt"] for r in rows] == ["tell me about the moon", HH]
    assert all(len(r["candidates"]) == 3 == len(r["scores"]) for r in rows)
    model = RewardModel.from_pretrained(reward_dir)
    again = rank(model, [r["prompt"] for r in rows], [r["candidates"] for r in rows])
    assert [a.best for a in again] == [r["best"] for r in rows]


def test_best_of_n_api(reward_dir: Path, tiny_lm: str) -> None:
    from fedrlhf.models.policy import PolicyModel
    from fedrlhf.rerank import best_of_n

    policy = PolicyModel.from_pretrained(tiny_lm)
    answers, ranked = best_of_n(
        policy, RewardModel.from_pretrained(reward_dir), ["hi"], n=2, max_new_tokens=4
    )
    assert len(answers[0]) == 2 and len(ranked[0].scores) == 2


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"candidates": ["a"]}, "field 'prompt': missing"),
        ({"prompt": "q"}, "field 'candidates': missing"),
        ({"prompt": "q", "candidates": []}, "field 'candidates': must be a non-empty list of strings"),
        ({"prompt": "q", "candidates": ["a", 3]}, "field 'candidates[1]': must be a string, got int"),
        ({"prompt": "q", "candidates": ["a", "  "]}, "field 'candidates[1]': must not be empty"),
    ],
)
def test_bad_candidate_lines_are_one_error_line(reward_dir, tmp_path, capsys, line, expected) -> None:
    cands = _jsonl(tmp_path / "c.jsonl", [{"prompt": "ok", "candidates": ["x"]}, line])
    assert main(["rerank", "--reward-model", str(reward_dir), "--candidates", str(cands)]) == 2
    assert f"{cands}, line 2, {expected}" in one_error_line(capsys, "rerank")
    with pytest.raises(DataError):
        read_candidates(cands)


def test_out_directory_and_missing_model_are_refused(reward_dir, tmp_path, capsys) -> None:
    cands = _jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "candidates": ["x"]}])
    assert (
        main(
            ["rerank", "--reward-model", str(reward_dir), "--candidates", str(cands), "--out", str(tmp_path)]
        )
        == 2
    )
    assert "is a directory" in one_error_line(capsys, "rerank")
    assert main(["rerank", "--reward-model", str(tmp_path / "nope"), "--candidates", str(cands)]) == 2
    assert "not a fedrlhf reward model" in one_error_line(capsys, "rerank")
