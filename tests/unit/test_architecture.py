"""The import contracts of pyproject.toml (import-linter) hold, and they catch an upward import.

The layers (sources -> mapping -> identity -> store -> search; config and the API above them;
routes and security side by side, security and on-demand reached only through the hooks) are
what keeps data flowing one way; `.ci/run` checks them on every change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the `app` package under `root`, with the contracts of `root`'s pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "app", copy / "app", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_import_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, upward",
    [
        ("app/store/engine.py", "import app.fhir.routes"),  # the store reaching the HTTP API
        ("app/mapping/patient.py", "import app.sync.batch"),  # mapping reaching the sync above it
        ("app/fhir/routes.py", "import app.security.scope"),  # a route calling security, not its hook
    ],
)
def test_an_upward_import_breaks_them(tmp_path, module, upward):
    copy = _copy(tmp_path)
    path = copy / module
    path.write_text(path.read_text() + f"\n{upward}  # added by the test\n")
    result = _lint(copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert module.removesuffix(".py").replace("/", ".") in result.stdout
