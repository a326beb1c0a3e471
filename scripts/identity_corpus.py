"""How well patient linking does on a multi-archive corpus synced for real (testbed/identity_corpus.py
makes the corpus: the same people in two or three real Orthancs, with the typos, swaps, twins and
namesakes real archives hold):

    .venv/bin/python -m scripts.identity_corpus [--people 300] [--seed 7] [--store URL]

prints precision and recall of the automatic links, the review queue, and any false link
between twins or namesakes. tests/integration/test_identity_corpus.py runs a smaller one.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from testbed.identity_corpus import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--store", default=None, help="store URL (default: a new SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.people, args.seed, args.store, Path(tmp))
    print(result.report())


if __name__ == "__main__":
    main()
