"""Every package the code imports is declared in pyproject.toml: the product's in `dependencies`,
what only tests, the testbed and the benchmarks import in the `test` extra. A package that arrives
only as another's dependency may vanish with that package's next release."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN = {"app", "fhir_profiles", "tests", "testbed", "scripts"}


def _imported(folder: str) -> set[str]:
    """Top-level names of the modules imported under `folder` (all but the standard library's)."""
    names: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in OWN}


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    found = packages_distributions()
    return {m: {d.lower().replace("_", "-") for d in found.get(m, [])} for m in modules}


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    product = _declared(project["dependencies"])
    testing = product | _declared(project["optional-dependencies"]["test"])
    missing = []
    for folders, declared in ((("app",), product), (("tests", "testbed", "scripts"), testing)):
        modules = set().union(*(_imported(f) for f in folders))
        for module, distributions in sorted(_distributions(modules).items()):
            if not distributions & declared:
                missing.append(f"{module} (imported under {', '.join(folders)}; from {distributions or 'nowhere'})")
    assert not missing, "not declared in pyproject.toml: " + "; ".join(missing)
