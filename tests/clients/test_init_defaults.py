"""``fedrlhf-client init`` defaults agree with the federation's app config (issue 28.9)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from clients.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_init_max_length_is_the_federations() -> None:
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    args = build_parser().parse_args(["init"])
    assert args.max_length == app["model.max_length"] and args.backbone == app["model.backbone"]


def test_documented_superlink_port_is_the_deployments() -> None:
    readme = (REPO / "clients" / "README.md").read_text()
    deployment = (REPO / "docs" / "deployment.md").read_text()
    assert "--port 9091" in deployment and ":9092" not in readme and ":9091" in readme
