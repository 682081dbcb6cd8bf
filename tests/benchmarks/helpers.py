"""Running a benchmark as benchmarks/README.md's command for it, at smoke sizes (``--quick``)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str) -> ModuleType:
    """A benchmark module by path (a site-packages "benchmarks" package can shadow the folder)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_command(script: str) -> list[str]:
    """The command benchmarks/README.md gives for ``script`` (the first inline one), as argv."""
    text = (BENCHMARKS / "README.md").read_text()
    found = re.search(rf"`(python benchmarks/{re.escape(script)}[^`]*)`", text)
    assert found, f"benchmarks/README.md gives no command for {script}"
    return shlex.split(found.group(1))


def run(script: str, *smoke: str, timeout: float = 600) -> str:
    """README's command for ``script`` plus the ``smoke`` arguments (``--quick`` and where to write),
    from the repository root; its output (it must succeed)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    python, *args = readme_command(script)
    assert python == "python"
    proc = subprocess.Popen(
        [sys.executable, *args, *smoke],
        cwd=BENCHMARKS.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # Ray's workers share the session: stopped with it below
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out[-4000:]
    return out


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
