"""The fedrlhf command: train and evaluate reward models, simulate federations, report privacy."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedrlhf.errors import FedRLHFError


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time unless asked to
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@contextmanager
def _plain_warnings(command: str) -> Iterator[None]:
    """While a command runs: a warning is one line, ``fedrlhf COMMAND: warning: ...``.

    Opacus' "Optimal order is the largest alpha" is dropped: the epsilon reported is still a
    valid bound, and the RDP orders are not a setting the user has.
    """

    def one_line(message: Warning | str, *_: object, **__: object) -> str:
        text = " ".join(str(message).split())
        return f"fedrlhf {command}: warning: {text}\n"

    previous = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Optimal order is the largest alpha",
            category=UserWarning,
            module=r"opacus\.accountants\.analysis\.rdp",
        )
        warnings.formatwarning = one_line  # type: ignore[assignment]
        try:
            yield
        finally:
            warnings.formatwarning = previous


DESCRIPTION = """\
Train and evaluate reward models on human feedback, simulate a federation of
devices that train one together, and show how much privacy a device has spent.

examples:
  fedrlhf simulate --config simulations/quickstart.toml --out runs/quickstart
  fedrlhf train --data feedback.jsonl --out my-model --dp-epsilon 8
  fedrlhf eval --model my-model --data test.jsonl
  fedrlhf privacy report --device-dir my-device

Run 'fedrlhf COMMAND --help' for the options of one command."""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--backbone",
        default="minilm",
        metavar="NAME",
        help="the frozen language model under the reward head: a Hugging Face model id, a local "
        "directory, or 'minilm' for the all-MiniLM-L6-v2 copy installed with fedrlhf (default: minilm)",
    )
    g.add_argument(
        "--max-length",
        type=int,
        default=128,
        metavar="N",
        help="tokens kept of each prompt plus response; longer ones lose their beginning (default: 128)",
    )
    g.add_argument(
        "--lora-r",
        type=int,
        default=8,
        metavar="R",
        help="rank of the LoRA adapters, the only backbone weights that train (default: 8)",
    )
    g.add_argument(
        "--lora-alpha",
        type=int,
        default=16,
        metavar="A",
        help="LoRA scaling factor; the adapters' output is scaled by A/R (default: 16)",
    )
    g.add_argument(
        "--trainable",
        choices=["lora", "head"],
        default=None,
        help="what trains: lora (LoRA adapters + head) or head (the head alone on the frozen "
        "backbone's features, computed once) (default: lora; head with --dp-epsilon)",
    )
    g.add_argument(
        "--pool-layers",
        type=int,
        default=None,
        metavar="K",
        help="the head reads the mean-pooled states of the last K layers (default: 1; 4 with --dp-epsilon)",
    )
    g.add_argument(
        "--lora-layers",
        type=int,
        default=0,
        metavar="N",
        help="LoRA on the top N layers only; the layers below are computed once and cached "
        "(default: 0 = every layer)",
    )
    g.add_argument(
        "--lora-targets",
        default="all-linear",
        metavar="NAMES",
        help="layers that get an adapter: comma-separated module names, or all-linear for every "
        "linear layer (default: all-linear)",
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs",
        type=float,
        default=None,
        metavar="E",
        help="passes over the data; fractions allowed (default: 2; 100 with --dp-epsilon)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="pairs per step; 0 = all pairs in every step (default: 16; 0 with --dp-epsilon)",
    )
    g.add_argument(
        "--grad-accumulation",
        type=int,
        default=1,
        metavar="K",
        help="add up K batches before each optimizer step; without DP only (default: 1)",
    )
    g.add_argument(
        "--lr", type=float, default=None, help="AdamW learning rate (default: 0.0005; 0.02 with --dp-epsilon)"
    )
    g.add_argument(
        "--seed", type=int, default=0, help="random seed of initialisation and shuffling (default: 0)"
    )
    g.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads torch may use; 0 lets torch choose (default: 0)",
    )
    d = p.add_argument_group(
        "differential privacy",
        "Train with DP-SGD (Opacus): each preference pair's influence is clipped and noised. "
        "Give --dp-epsilon or --dp-noise-multiplier to turn it on; without either, training is not private.",
    )
    d.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        metavar="EPS",
        help="privacy budget: train privately so that the total epsilon spent on this data, over "
        "every run recorded in its ledger, stays at most EPS (default: off)",
    )
    d.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=None,
        metavar="SIGMA",
        help="train privately with this much noise (relative to --max-grad-norm) instead of "
        "aiming at an epsilon; the epsilon spent is reported (default: off)",
    )
    d.add_argument(
        "--dp-delta",
        type=float,
        default=1e-5,
        metavar="DELTA",
        help="the delta of (epsilon, delta) privacy, a small chance that the epsilon bound fails; "
        "must be below 0.001 and below 1 / number of pairs (default: 1e-05)",
    )
    d.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        metavar="C",
        help="largest gradient norm one pair may contribute before noise is added (default: 1.0)",
    )
    d.add_argument(
        "--dp-accountant",
        choices=["rdp", "prv"],
        default="rdp",
        help="how epsilon is computed: rdp (Renyi DP) or prv (privacy random variables, tighter "
        "and slower) (default: rdp)",
    )
    d.add_argument(
        "--ledger",
        type=Path,
        default=None,
        metavar="FILE",
        help="file that records the privacy spent on this data across runs (default: one per data "
        "set, found by its content, under ~/.fedrlhf/ledgers/)",
    )


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedrlhf`` command."""
    parser = argparse.ArgumentParser(
        prog="fedrlhf", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"fedrlhf {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_simulate_parser(sub)
    _add_privacy_parser(sub)
    _add_rerank_parser(sub)
    return parser


def _add_train_parser(sub: Any) -> None:
    t = sub.add_parser(
        "train",
        help="train a reward model on one feedback file (the same training a device runs)",
        description="Train a reward model (a frozen backbone with small LoRA adapters and a score "
        "head) on preference pairs or ratings, and save it to --out. Prints a one-line JSON summary.",
    )
    t.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="FILE",
        help="feedback to train on: .jsonl or .jsonl.gz with Anthropic HH lines (chosen, rejected), "
        "prompt/chosen/rejected lines, or prompt/response/label ratings",
    )
    t.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to save the trained model in"
    )
    t.add_argument(
        "--eval-data",
        type=Path,
        default=None,
        metavar="FILE",
        help="preference pairs to measure the trained model's accuracy on (default: none)",
    )
    t.add_argument(
        "--skip-invalid", action="store_true", help="skip malformed lines of the data instead of stopping"
    )
    t.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the tokenized data here, so a second run on it starts faster (default: no cache)",
    )
    t.add_argument("--quiet", action="store_true", help="do not show the progress bar")
    _add_model_args(t)
    _add_train_args(t)


def _add_eval_parser(sub: Any) -> None:
    e = sub.add_parser(
        "eval",
        help="measure a saved reward model's accuracy on preference pairs",
        description="Score each preference pair with a saved reward model and print how often the "
        "chosen response scores above the rejected one (pairwise accuracy).",
    )
    e.add_argument(
        "--model", type=Path, required=True, metavar="DIR", help="a model directory written by fedrlhf train"
    )
    e.add_argument(
        "--data", type=Path, required=True, metavar="FILE", help="preference pairs, .jsonl or .jsonl.gz"
    )
    e.add_argument(
        "--json", action="store_true", help='print one JSON line, {"pairs": N, "accuracy": A, ...}'
    )
    e.add_argument(
        "--per-pair",
        type=Path,
        default=None,
        metavar="FILE",
        help='also write each pair\'s score margin to FILE, one {"index": i, "margin": m} line per '
        "pair in input order (default: not written)",
    )
    e.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="N",
        help="pairs scored at a time; lower it if memory runs out (default: 64)",
    )
    e.add_argument(
        "--skip-invalid", action="store_true", help="skip malformed lines of the data instead of stopping"
    )


def _add_simulate_parser(sub: Any) -> None:
    s = sub.add_parser(
        "simulate",
        help="simulate a federation of devices on this machine",
        description="Run a federation described by a TOML config on this machine (Flower's "
        "simulation engine): every simulated device trains on its own data, the server combines "
        "their updates each round. Writes report.md, report.json and plots to --out. Running the "
        "same command again resumes a run that was stopped.",
    )
    s.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="the run's TOML config; simulations/ holds ready-made ones",
    )
    s.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory for the report, the models and the simulated devices (default: "
        "runs/<config file name>)",
    )
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change one setting of the config, e.g. --set federation.rounds=5; repeat it for more",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="devices trained at the same time (default: one per CPU core, at most the devices per round)",
    )
    s.add_argument("--quiet", action="store_true", help="do not show the progress bar")


def _add_privacy_parser(sub: Any) -> None:
    pr = sub.add_parser(
        "privacy",
        help="show the privacy spent on a device's data",
        description="Show the privacy spent on a device's data, read from its privacy ledger.",
    )
    prsub = pr.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")
    rep = prsub.add_parser(
        "report",
        help="print the epsilon spent (and left, given a budget)",
        description="Print the epsilon spent on a device's data over every private run recorded in "
        "its ledger, and what is left of a budget if you give one.",
    )
    where = rep.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--device-dir",
        type=Path,
        metavar="DIR",
        help="a device directory; its ledger is DIR/privacy_ledger.json",
    )
    where.add_argument("--ledger", type=Path, metavar="FILE", help="a privacy ledger file")
    rep.add_argument(
        "--lifetime-epsilon",
        type=float,
        default=None,
        metavar="EPS",
        help="a total budget; also print how much of it is left (default: none)",
    )
    rep.add_argument("--json", action="store_true", help="print the ledger's report as one JSON line")


def _add_rerank_parser(sub: Any) -> None:
    r = sub.add_parser(
        "rerank",
        help="rank candidate answers with a reward model (best-of-n)",
        description="Score candidate answers to each prompt with a saved reward model and pick the "
        "best. Either give the candidates (--candidates) or let a policy model write -n of them per "
        "prompt (--prompts). A prompt is plain text or an HH transcript ending in "
        "'\\n\\nAssistant:'; each answer is scored exactly as 'fedrlhf eval' scores it in a pair. "
        'Writes one JSON line per prompt, in input order: {"index": i, "scores": [...], "best": k} '
        '(with --prompts also "prompt" and "candidates").',
    )
    r.add_argument(
        "--reward-model",
        type=Path,
        required=True,
        metavar="DIR",
        help="a reward model directory written by fedrlhf train",
    )
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--candidates",
        type=Path,
        metavar="FILE",
        help='JSONL of {"prompt": str, "candidates": [str, ...]} lines to rank',
    )
    what.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE",
        help='JSONL of {"prompt": str} lines; the policy writes -n answers to each',
    )
    r.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="write the JSON lines here (default: stdout)"
    )
    r.add_argument(
        "--policy",
        default="smollm2",
        metavar="DIR",
        help="with --prompts: the model that writes the answers: a policy saved by fedrlhf, a Hugging "
        "Face causal LM directory or id, or smollm2 for SmolLM2-135M-Instruct (needs "
        "pip install -e '.[policy]') (default: smollm2)",
    )
    r.add_argument(
        "-n", type=_positive_int, default=4, metavar="N", help="answers written per prompt (default: 4)"
    )
    r.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=64,
        metavar="T",
        help="longest answer the policy writes, in tokens (default: 64)",
    )
    r.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        metavar="T",
        help="sampling temperature; 0 = greedy, only with -n 1 (default: 0.7)",
    )
    r.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default: 0)")
    r.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="N",
        help="answers scored at a time; lower it if memory runs out (default: 64)",
    )


def _version() -> str:
    from fedrlhf import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for user errors, with a one-line message)."""
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    from fedrlhf import commands

    handlers: dict[str, Any] = {
        "train": commands.train_command,
        "eval": commands.eval_command,
        "simulate": commands.simulate_command,
        "privacy": commands.privacy_command,
        "rerank": commands.rerank_command,
    }
    try:
        with _plain_warnings(args.command):
            return int(handlers[args.command](args) or 0)
    except FedRLHFError as exc:
        _error(args.command, str(exc))
        return 2
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        _error(args.command, f"{where}{exc.strerror or exc}")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _error(command: str, message: str) -> None:
    """Print ``fedrlhf COMMAND: error: MESSAGE`` as one line on stderr."""
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"fedrlhf {command}: error: {line}", file=sys.stderr)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


if __name__ == "__main__":
    sys.exit(main())
