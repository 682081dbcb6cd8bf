"""``load_run_config`` on files that are not run configs: one line naming the file, exit code 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedrlhf.cli import main
from fedrlhf.config import load_run_config
from fedrlhf.errors import ConfigError


@pytest.mark.parametrize(
    ("content", "overrides", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", [], "not a TOML file (not UTF-8 text)"),
        (b"federation = 3\n", ["federation.rounds=2"], "federation = 3 is not a table; write [federation]"),
        (b"federation = 3\n", [], "federation = 3 is not a table"),
        (b'robust = "mean"\n[federation]\nrounds = 2\n', [], "robust = 'mean' is not a table"),
    ],
)
def test_a_file_that_is_no_run_config_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, overrides: list[str], message: str
) -> None:
    path = tmp_path / "run.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_run_config(path, overrides)
    assert str(err.value).startswith(f"{path}: ")
    sets = [arg for o in overrides for arg in ("--set", o)]
    code = main(["simulate", "--config", str(path), "--out", str(tmp_path / "out"), *sets])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [f"fedrlhf simulate: error: {err.value}"]


def test_a_valid_file_with_overrides_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[federation]\nrounds = 4\n")
    cfg = load_run_config(path, ["federation.rounds=2", "robust.rule=coordinate_median"])
    assert (cfg.federation.rounds, cfg.robust.rule) == (2, "coordinate_median")
