"""How strings are compared in search: one form for the index and the query alike."""

from __future__ import annotations

import re
import unicodedata

import jellyfish

_WORD = re.compile(r"[^\W\d_]+")


def normalize(text: str) -> str:
    """Case- and accent-insensitive form used for string search (FHIR R4 search 3.1.1.5.13)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def phonetic_codes(text: str) -> list[str]:
    """The Metaphone code of each word, accents removed first (`Müller` and `Mueller` agree).

    R4 leaves the `phonetic` algorithm to the server; Metaphone suits the Latin-script names
    DICOM's alphabetic name group holds. Words without letters have no code.
    """
    codes = []
    for word in _WORD.findall(normalize(text)):
        code = jellyfish.metaphone(word)
        if code and code not in codes:
            codes.append(code)
    return codes
