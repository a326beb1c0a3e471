"""Build the bundled sample archive from the real DICOM files shipped inside pydicom.

Usage: .venv/bin/python scripts/make_sample_archive.py [TARGET_DIR]   (default: ./sample-archive)

The files are copied as they are, broken ones included, so the first sync shows what the
facade does with real-world headers: most are indexed, a few are repaired or quarantined.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pydicom.data import get_testdata_files


def main(target: str = "sample-archive") -> int:
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    root = None
    copied = 0
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if not path.is_file():  # the list also names folders, whose files are listed too
            continue
        if root is None:
            # every shipped file lives under pydicom/data/test_files
            root = next(p for p in path.parents if p.name == "test_files")
        dest = out / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        copied += 1
    print(f"sample archive: {copied} files copied into {out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="sample-archive", help="the folder to fill (default: %(default)s)")
    sys.exit(main(parser.parse_args().target))
