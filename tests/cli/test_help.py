"""`fedrlhf --help` and every subcommand's help: plain words, every option explained, defaults shown."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from fedrlhf.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path: (), ("train",), ..., ("privacy", "report")."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _parser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


COMMANDS = list(_commands(build_parser()))


def test_every_command_is_covered() -> None:
    assert {("train",), ("eval",), ("simulate",), ("privacy",), ("privacy", "report")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "fedrlhf")
def test_help_is_plain_text(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: fedrlhf")
    assert "``" not in text and ":mod:" not in text and ":func:" not in text


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "fedrlhf")
def test_every_option_says_what_it_does_and_its_default(path: tuple[str, ...]) -> None:
    parser = _parser(path)
    assert parser.description, f"fedrlhf {' '.join(path)} has no description"
    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        name = action.option_strings[-1]
        assert action.help and len(action.help.split()) >= 3, f"{name}: no help in words"
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert "(default: " in action.help, f"{name}: default {action.default!r} not shown"


def test_top_level_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "fedrlhf simulate --config simulations/quickstart.toml" in text
