"""The federation package knows nothing of simulations, and its modules share only public names.

Simulated attackers, dropouts and stragglers are installed by ``fedrlhf.simulation`` (Flower
mods around the production ClientApp, a replacement hook at the server); production code must
run without them. Checked on the source (imports anywhere in a module, lazy ones included) and
at run time (importing the production apps loads no simulation module).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fedrlhf

FEDERATION = Path(fedrlhf.__file__).parent / "federation"
MODULES = sorted(FEDERATION.glob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``(module, names)`` a file imports, anywhere in it (``import m``: names empty);
    ``importlib.import_module("m")`` and ``__import__("m")`` with a literal name count too."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "fedrlhf.federation" if node.level else ""  # relative imports stay in the package
            module = ".".join(p for p in (base, node.module or "") if p)
            found.append((module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, []))
    return found


def test_the_scan_sees_the_modules_and_their_lazy_imports() -> None:
    names = {p.name for p in MODULES}
    assert {"client_app.py", "secure.py", "server.py"} <= names
    lazy = [m for m, _ in _imports(FEDERATION / "secure.py")]
    assert "fedrlhf.training.device" in lazy  # imported inside _SecureClient.fit


def test_federation_never_imports_the_simulation_package() -> None:
    bad = []
    for path in MODULES:
        for module, names in _imports(path):
            if module.startswith("fedrlhf.simulation") or (module == "fedrlhf" and "simulation" in names):
                bad.append(f"{path.name}: {module} {names}")
    assert bad == []


def test_federation_modules_share_only_public_names() -> None:
    """No module of fedrlhf/ reaches into another's private helpers (``_name``) from federation."""
    bad = []
    for path in MODULES:
        for module, names in _imports(path):
            private = [n for n in names if n.startswith("_")]
            if module.startswith("fedrlhf") and private:
                bad.append(f"{path.name}: from {module} import {private}")
    assert bad == []


def test_importing_the_production_apps_loads_no_simulation_module() -> None:
    code = (
        "import sys\n"
        "import fedrlhf.federation.client_app, fedrlhf.federation.secure, fedrlhf.federation.server\n"
        "print(sorted(m for m in sys.modules if m.startswith('fedrlhf.simulation')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
