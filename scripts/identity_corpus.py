"""How well patient linking does on a multi-archive corpus, synced for real (testbed/identity_corpus.py).

The same people are stored in two or three real Orthanc archives (started like the
integration tests do) under each archive's own Patient IDs and issuer, as header-only
copies of a real pydicom test file whose patient attributes are replaced. The copies carry
what real archives carry: typos in a name, family and given name swapped, a birth date
missing, its day and month transposed or one digit wrong, a middle name added, Japanese
names with ideographic and phonetic groups whose romanization differs. Among the people are
twins (same family name and birth date, another given name, often another sex) and
namesakes (same names, another birth date): different people that must not be linked. Some
copies in archive C name the archive-A record in Other Patient IDs, and some are filed under
archive A's legacy issuer, which the config declares one namespace with A's.

Every archive is then synced through the DICOMweb source into a fresh store, which runs the
identity step, and the automatic links (Patient.link) are compared with the truth:

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
