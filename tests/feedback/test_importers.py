"""Reading, writing and splitting feedback files."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrlhf.errors import ConfigError, DataError
from fedrlhf.feedback import (
    Correction,
    Feedback,
    ImportResult,
    Preference,
    Rating,
    read_feedback,
    read_preferences,
    split_records,
    write_jsonl,
)
from fedrlhf.feedback.importers import HH_EMPTY_RESPONSE

HH_DEV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"

H, A = "\n\nHuman:", "\n\nAssistant:"


def write_lines(path: Path, lines: list[Any], *, compress: bool = False) -> Path:
    """Write each item as a JSON line (str items verbatim)."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    data = gzip.compress(text.encode()) if compress else text.encode()
    path.write_bytes(data)
    return path


def read_one(tmp_path: Path, obj: Any, **kwargs: Any) -> Feedback:
    result = read_feedback(write_lines(tmp_path / "f.jsonl", [obj]), **kwargs)
    assert len(result.records) == 1
    return result.records[0]


def error_of(tmp_path: Path, lines: list[Any], **kwargs: Any) -> DataError:
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        read_feedback(path, **kwargs)
    return info.value


# ----------------------------------------------------------------------------- HH-RLHF


def test_hh_single_turn(tmp_path: Path) -> None:
    rec = read_one(tmp_path, {"chosen": f"{H} Hi?{A} Hello there. ", "rejected": f"{H} Hi?{A} Go away."})
    assert rec == Preference(f"{H} Hi?{A}", "Hello there.", "Go away.")


def test_hh_multi_turn_prompt_keeps_history(tmp_path: Path) -> None:
    history = f"{H} How do I bake bread?{A} Use flour.{H} And then?{A}"
    rec = read_one(tmp_path, {"chosen": history + " Knead it.", "rejected": history + " No idea."})
    assert rec.prompt == history
    assert (rec.chosen, rec.rejected) == ("Knead it.", "No idea.")


def test_hh_responses_sharing_words_split_at_marker(tmp_path: Path) -> None:
    rec = read_one(tmp_path, {"chosen": f"{H} q{A} I think yes", "rejected": f"{H} q{A} I think no"})
    assert (rec.prompt, rec.chosen, rec.rejected) == (f"{H} q{A}", "I think yes", "I think no")


def test_hh_last_markers_at_different_positions(tmp_path: Path) -> None:
    # The chosen reply itself contains a later "Assistant:" turn (as in real HH data).
    chosen = f"{H} q1{A} a1{H} q2{A} Sure.{H} more{A} ok"
    rejected = f"{H} q1{A} a1{H} q2{A} Nope."
    rec = read_one(tmp_path, {"chosen": chosen, "rejected": rejected})
    assert rec.prompt == f"{H} q1{A} a1{H} q2{A}"
    assert rec.chosen == f"Sure.{H} more{A} ok"
    assert rec.rejected == "Nope."


def test_hh_divergence_inside_marker_uses_earlier_marker(tmp_path: Path) -> None:
    # Common prefix ends inside "\n\nAssistant" of one and "\n\nAssistants" of the other.
    rec = read_one(tmp_path, {"chosen": f"{H} q{A} x{A} y", "rejected": f"{H} q{A} x\n\nAssistants"})
    assert rec.prompt == f"{H} q{A}"
    assert rec.chosen == f"x{A} y"


def test_hh_empty_final_turn_becomes_placeholder(tmp_path: Path) -> None:
    rec = read_one(tmp_path, {"chosen": f"{H} list bad words{A} ", "rejected": f"{H} list bad words{A} Ok"})
    assert (rec.chosen, rec.rejected) == (HH_EMPTY_RESPONSE, "Ok")


def test_hh_forced_format_ignores_prompt_key(tmp_path: Path) -> None:
    obj = {"prompt": "ignored", "chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"}
    assert read_one(tmp_path, obj, format="hh").prompt == f"{H} q{A}"


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        ({"chosen": f"{H} q{A} a", "rejected": f"{H} q{A} a"}, "rejected", "identical"),
        ({"chosen": f"{H} q{A} a", "rejected": f"{H} q{A} a  "}, "rejected", "identical"),
        ({"chosen": f"{H} q no assistant", "rejected": f"{H} q{A} b"}, "chosen", "Assistant"),
        ({"chosen": f"{H} q{A} a", "rejected": "plain text"}, "rejected", "Assistant"),
        ({"chosen": f"{H} q1{A} a", "rejected": f"{H} q2{A} a"}, "rejected", "shares no"),
        ({"chosen": f"{H} q{A} a"}, "rejected", "missing"),
        ({"chosen": f"{H} q{A} a", "rejected": 5}, "rejected", "string"),
    ],
)
def test_hh_errors(tmp_path: Path, obj: dict, field: str, words: str) -> None:
    err = error_of(tmp_path, [obj], format="hh")
    assert (err.line, err.field) == (1, field)
    assert words in str(err)


def test_real_hh_dev_file_parses_completely() -> None:
    if not HH_DEV.exists():
        pytest.skip("../shared/data not present (a user's clone); CI has it")
    result = read_feedback(HH_DEV)
    assert len(result.records) == 1644 and result.skipped == []
    for rec in result.records:
        assert isinstance(rec, Preference)
        assert rec.prompt.strip() and rec.chosen.strip() and rec.rejected.strip()
        assert rec.prompt.endswith(A) and rec.chosen != rec.rejected
    assert len(read_preferences(HH_DEV)) == 1644


# ----------------------------------------------------------------------------- generic preferences


def test_preference_strings(tmp_path: Path) -> None:
    rec = read_one(tmp_path, {"prompt": "Q", "chosen": " a ", "rejected": "b", "reason": "why", "id": 7})
    assert rec == Preference("Q", " a ", "b", "why")


def test_preference_messages_with_prompt_string(tmp_path: Path) -> None:
    obj = {
        "prompt": "What is 2+2?",
        "chosen": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"}],
    }
    assert read_one(tmp_path, obj) == Preference("What is 2+2?", "4", "5")


def test_preference_messages_render_prompt(tmp_path: Path) -> None:
    history = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Joke?"},
    ]
    obj = {
        "chosen": [*history, {"role": "assistant", "content": "Knock knock"}],
        "rejected": [*history, {"role": "assistant", "content": "No"}],
    }
    rec = read_one(tmp_path, obj)
    assert rec.prompt == f"\n\nSystem: Be kind.{H} Hi{A} Hello{H} Joke?{A}"
    assert (rec.chosen, rec.rejected) == ("Knock knock", "No")


def test_preference_prompt_as_messages(tmp_path: Path) -> None:
    obj = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello"}],
        "rejected": "Bye",
    }
    assert read_one(tmp_path, obj) == Preference(f"{H} Hi{A}", "Hello", "Bye")


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"prompt": "q", "chosen": "a"}, "rejected"),
        ({"prompt": "q", "chosen": 1, "rejected": "b"}, "chosen"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "reason": 1}, "reason"),
        ({"prompt": "q", "chosen": [], "rejected": "b"}, "chosen"),
        ({"prompt": "q", "chosen": ["a"], "rejected": "b"}, "chosen[0]"),
        ({"prompt": "q", "chosen": [{"role": "bot", "content": "a"}], "rejected": "b"}, "chosen[0].role"),
        ({"prompt": "q", "chosen": [{"role": ["x"], "content": "a"}], "rejected": "b"}, "chosen[0].role"),
        ({"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}, "chosen[0].content"),
        ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "chosen[0].role"),
        (
            {
                "chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}],
            },
            "rejected",
        ),
    ],
)
def test_preference_errors(tmp_path: Path, obj: dict, field: str) -> None:
    err = error_of(tmp_path, ["", obj])
    assert (err.line, err.field) == (2, field)
    assert str(err).startswith(f"{tmp_path / 'bad.jsonl'}, line 2, field {field!r}: ")


def test_preference_format_requires_prompt_for_strings(tmp_path: Path) -> None:
    err = error_of(tmp_path, [{"chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"}], format="preference")
    assert err.field == "prompt" and "missing" in str(err)


# ----------------------------------------------------------------------------- ratings and corrections


@pytest.mark.parametrize(("label", "expected"), [(True, 1), (False, -1), (1, 1), (-1, -1), (0, -1)])
def test_rating_labels(tmp_path: Path, label: Any, expected: int) -> None:
    assert read_one(tmp_path, {"prompt": "q", "completion": "r", "label": label}) == Rating(
        "q", "r", expected
    )


def test_rating_response_alias_and_reason(tmp_path: Path) -> None:
    rec = read_one(
        tmp_path, {"prompt": "", "response": "r", "label": True, "reason": "nice"}, format="rating"
    )
    assert rec == Rating("", "r", 1, "nice")


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"prompt": "q", "completion": "r", "label": 2}, "label"),
        ({"prompt": "q", "completion": "r", "label": 1.0}, "label"),
        ({"prompt": "q", "completion": "r", "label": "yes"}, "label"),
        ({"prompt": "q", "completion": "r", "label": None}, "label"),
        ({"prompt": "q", "completion": " ", "label": 1}, "completion"),
        ({"prompt": "q", "response": "", "label": 1}, "response"),
        ({"prompt": "q", "label": 1}, "completion"),
        ({"completion": "r", "label": 1}, "prompt"),
        ({"prompt": None, "completion": "r", "label": 1}, "prompt"),
        ({"prompt": "q", "completion": "r", "response": "r", "label": 1}, "response"),
    ],
)
def test_rating_errors(tmp_path: Path, obj: dict, field: str) -> None:
    err = error_of(tmp_path, [obj])
    assert (err.line, err.field) == (1, field)


def test_rating_format_requires_label(tmp_path: Path) -> None:
    assert error_of(tmp_path, [{"prompt": "q", "completion": "r"}], format="rating").field == "label"


def test_correction(tmp_path: Path) -> None:
    rec = read_one(tmp_path, {"prompt": "q", "response": "old", "corrected": "new", "reason": "typo"})
    assert rec == Correction("q", "old", "new", "typo")


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"prompt": "q", "response": "x", "corrected": "x"}, "corrected"),
        ({"prompt": "q", "corrected": "x"}, "response"),
        ({"prompt": "q", "response": "x", "corrected": {}}, "corrected"),
        ({"response": "x", "corrected": "y"}, "prompt"),
    ],
)
def test_correction_errors(tmp_path: Path, obj: dict, field: str) -> None:
    assert error_of(tmp_path, [obj]).field == field


# ----------------------------------------------------------------------------- files and lines


def test_mixed_file_gzip_by_magic_bytes(tmp_path: Path) -> None:
    lines = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        "",
        "   ",
        {"prompt": "q", "completion": "r", "label": 1},
        {"prompt": "q", "response": "x", "corrected": "y"},
    ]
    path = write_lines(tmp_path / "feedback.data", lines, compress=True)  # no .gz suffix
    result = read_feedback(path)
    assert isinstance(result, ImportResult)
    assert [type(r) for r in result.records] == [Preference, Rating, Correction]
    assert result.lines == [1, 4, 5] and result.skipped == [] and result.path == str(path)


def test_crlf_and_bom_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "q", "chosen": "a", "rejected": "b"}\r\n\r\n')
    assert read_feedback(path).records == [Preference("q", "a", "b")]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object, got array"),
        ('"text"', "JSON object, got string"),
        ("null", "got null"),
        ('{"foo": 1}', "cannot tell the record type"),
        ("[" * 100_000, "invalid JSON"),
    ],
)
def test_line_errors_name_path_and_line(tmp_path: Path, line: str, words: str) -> None:
    err = error_of(tmp_path, [{"prompt": "q", "chosen": "a", "rejected": "b"}, line])
    assert err.path == str(tmp_path / "bad.jsonl") and err.line == 2
    assert words in str(err) and str(err).startswith(f"{err.path}, line 2")


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match="line 2: not valid UTF-8"):
        read_feedback(path)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"prompt": "q \\ud800", "chosen": "a", "rejected": "b"}', "prompt"),
        ('{"prompt": "q", "chosen": "a", "rejected": "b\\udfff", "reason": "r"}', "rejected"),
        ('{"prompt": "q", "completion": "a", "label": 1, "reason": "\\ud83d"}', "reason"),
    ],
)
def test_lone_surrogate_is_a_data_error_naming_file_and_line(tmp_path: Path, line: str, field: str) -> None:
    """JSON escapes can encode a lone surrogate, which no tokenizer accepts: refuse it at import."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n' + line + "\n")
    with pytest.raises(DataError, match="line 2, field .*lone surrogate") as info:
        read_feedback(path)
    assert info.value.path == str(path) and info.value.field == field
    assert read_feedback(path, skip_invalid=True).skipped[0][0] == 2


def test_skip_invalid_records_reasons(tmp_path: Path) -> None:
    lines = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        "oops",
        {"prompt": "q", "chosen": "a"},
        {"prompt": "q", "completion": "r", "label": 1},
    ]
    result = read_feedback(write_lines(tmp_path / "f.jsonl", lines), skip_invalid=True)
    assert len(result.records) == 2 and result.lines == [1, 4]
    assert [line for line, _ in result.skipped] == [2, 3]
    assert "invalid JSON" in result.skipped[0][1]
    assert result.skipped[1][1] == "field 'rejected': missing"


def test_all_invalid_raises_even_when_skipping(tmp_path: Path) -> None:
    err = error_of(tmp_path, ["oops", {"x": 1}, ""], skip_invalid=True)
    assert "no feedback records" in str(err) and "all 2 " in str(err) and err.line is None


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match="no feedback records"):
        read_feedback(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found") as info:
        read_feedback(tmp_path / "nope.jsonl")
    assert info.value.path == str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="cannot open"):
        read_feedback(tmp_path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n' * 100)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="gzip") as info:
        read_feedback(path, skip_invalid=True)
    assert info.value.path == str(path)


def test_unknown_format_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="format"):
        read_feedback(tmp_path / "x.jsonl", format="csv")


# ----------------------------------------------------------------------------- read_preferences


def test_read_preferences_converts_corrections(tmp_path: Path) -> None:
    lines = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "response": "x", "corrected": "y"},
    ]
    prefs = read_preferences(write_lines(tmp_path / "f.jsonl", lines))
    assert prefs == [Preference("q", "a", "b"), Preference("q", "y", "x")]


def test_read_preferences_refuses_ratings(tmp_path: Path) -> None:
    lines = [
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        "",
        {"prompt": "q", "completion": "r", "label": 0},
    ]
    with pytest.raises(DataError, match="rating") as info:
        read_preferences(write_lines(tmp_path / "f.jsonl", lines))
    assert info.value.line == 3


# ----------------------------------------------------------------------------- writing


RECORDS: list[Feedback] = [
    Preference("", "a", "b"),
    Preference(f"{H} q{A}", " spaced ", "émoji 🎉\n", reason="because"),
    Rating("q", "r", 1),
    Rating("q", "r", -1, reason=""),
    Correction("q", "old", "new"),
]


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_write_read_round_trip(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path / name, RECORDS)
    assert path == tmp_path / name
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert read_feedback(path).records == RECORDS
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind


def test_write_replaces_atomically_and_validates_first(tmp_path: Path) -> None:
    path = write_jsonl(str(tmp_path / "f.jsonl"), RECORDS[:1])
    with pytest.raises(TypeError):
        write_jsonl(path, [RECORDS[0], "not a record"])  # type: ignore[list-item]
    with pytest.raises(DataError, match="identical"):
        write_jsonl(path, [Preference("q", "same", "same")])
    assert read_feedback(path).records == RECORDS[:1]
    assert os.listdir(tmp_path) == ["f.jsonl"]


feedback_text = st.text(min_size=1).filter(lambda s: s.strip() != "")
maybe_reason = st.none() | st.text()
feedback_records = st.one_of(
    st.tuples(st.text(), feedback_text, feedback_text, maybe_reason)
    .filter(lambda t: t[1] != t[2])
    .map(lambda t: Preference(*t)),
    st.builds(Rating, st.text(), feedback_text, st.sampled_from([1, -1]), maybe_reason),
    st.tuples(st.text(), feedback_text, feedback_text, maybe_reason)
    .filter(lambda t: t[1] != t[2])
    .map(lambda t: Correction(*t)),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(feedback_records, min_size=1, max_size=5), st.booleans())
def test_round_trip_property(records: list[Feedback], compress: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(Path(tmp) / ("f.jsonl.gz" if compress else "f.jsonl"), records)
        assert read_feedback(path).records == records


# ----------------------------------------------------------------------------- fuzzing


def read_or_data_error(data: bytes, **kwargs: Any) -> None:
    """read_feedback on ``data`` must return records or raise DataError, nothing else."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.jsonl"
        path.write_bytes(data)
        try:
            result = read_feedback(path, **kwargs)
        except DataError:
            return
        assert result.records


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["prompt", "chosen", "rejected", "completion", "response", "label", "corrected", "reason"]
ROLES = ["user", "assistant", "system", "x"]
keys = st.sampled_from(FIELDS)
texts = st.text(alphabet="ab \nHuman:Assistant", min_size=1, max_size=30)
message = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": texts | json_values})
field_values = st.one_of(
    texts, st.sampled_from([True, False, 1, 0, -1, 2, None]), st.lists(message, max_size=3), json_values
)


def shaped(*names: str) -> st.SearchStrategy[dict]:
    """Dicts with the given keys (and maybe reason/prompt), values often of the right kind."""
    good = {"label": st.sampled_from([True, False, 1, 0, -1])}
    fields = {name: good.get(name, texts) | field_values for name in names}
    optional = {k: texts | field_values for k in ("reason", "prompt") if k not in names}
    return st.fixed_dictionaries(fields, optional=optional)


# Records of each shape (reaching the success paths), known keys, or anything.
feedback_dicts = st.one_of(
    shaped("chosen", "rejected"),
    shaped("prompt", "chosen", "rejected"),
    shaped("prompt", "completion", "label"),
    shaped("prompt", "response", "corrected"),
    st.dictionaries(keys, field_values, max_size=6),
    st.dictionaries(keys | st.text(max_size=5), json_values, max_size=6),
)
fuzz_settings = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz_settings
@given(st.binary(max_size=300), st.booleans(), st.booleans())
def test_fuzz_arbitrary_bytes(data: bytes, compress: bool, skip: bool) -> None:
    read_or_data_error(gzip.compress(data) if compress else data, skip_invalid=skip)


@fuzz_settings
@given(st.lists(json_values, min_size=1, max_size=4), st.booleans())
def test_fuzz_arbitrary_json_values(values: list[Any], skip: bool) -> None:
    read_or_data_error("\n".join(json.dumps(v) for v in values).encode(), skip_invalid=skip)


@fuzz_settings
@given(
    st.lists(feedback_dicts, min_size=1, max_size=4),
    st.sampled_from(["auto", "hh", "preference", "rating", "correction"]),
    st.booleans(),
)
def test_fuzz_arbitrary_dicts(dicts: list[dict], format: str, skip: bool) -> None:
    read_or_data_error("\n".join(json.dumps(d) for d in dicts).encode(), format=format, skip_invalid=skip)


# ----------------------------------------------------------------------------- splitting


def test_split_is_deterministic_and_partitions() -> None:
    records = list(range(100))
    train, test = split_records(records, test_fraction=0.2, seed=7)
    assert len(test) == 20 and len(train) == 80
    assert sorted(train + test) == records
    assert split_records(records, test_fraction=0.2, seed=7) == (train, test)
    assert split_records(records, test_fraction=0.2, seed=8) != (train, test)
    assert records == list(range(100))


def test_split_edges() -> None:
    assert split_records([1, 2], test_fraction=0.01, seed=0)[1] != []
    assert split_records([1, 2], test_fraction=0.99, seed=0)[0] != []
    assert split_records([1, 2, 3], test_fraction=0.0, seed=0)[1] == []
    assert split_records([1, 2, 3], test_fraction=1.0, seed=0)[0] == []
    assert split_records([], test_fraction=0.5, seed=0) == ([], [])


@pytest.mark.parametrize(
    ("fraction", "seed"), [(-0.1, 0), (1.5, 0), (float("nan"), 0), (True, 0), (0.5, "a")]
)
def test_split_rejects_bad_arguments(fraction: Any, seed: Any) -> None:
    with pytest.raises(ConfigError):
        split_records([1, 2], test_fraction=fraction, seed=seed)
