"""Build the FHIR NPM package of our profiles (app/fhir/package.py) into `dist/`.

Usage: .venv/bin/python -m scripts.build_fhir_package [--out dist]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.fhir.package import ROOT, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    print(build(parser.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
