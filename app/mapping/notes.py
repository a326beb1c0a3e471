"""ImagingStudy.note: what the source and the mapping repaired or left out to read a study.

Each repair becomes an R4 Annotation written by the facade (`authorString`), so whoever reads
the study sees what was changed. A damaged header can produce many notes, and a note may
quote a value: both are bounded.
"""

from __future__ import annotations

from app.mapping.values import clean_text

#: most repair notes written into one ImagingStudy
MAX_NOTES = 100
#: longest repair note kept (a note may quote a value)
MAX_NOTE = 500
NOTE_AUTHOR = "imaging-facade"


def note_text(note: object) -> str:
    """A repair note as a FHIR string: no control characters, at most MAX_NOTE characters."""
    note = clean_text(str(note), "note", None) or "?"
    return note if len(note) <= MAX_NOTE else note[: MAX_NOTE - 3] + "..."


def note_annotations(repairs: list) -> list[dict]:
    """ImagingStudy.note: one Annotation per repair the source or the mapping made."""
    texts = list(dict.fromkeys(note_text(note) for note in repairs))
    if len(texts) > MAX_NOTES:
        texts[MAX_NOTES - 1 :] = [f"... and {len(texts) - MAX_NOTES + 1} more repairs"]
    return [{"authorString": NOTE_AUTHOR, "text": text} for text in texts]
