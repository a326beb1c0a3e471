"""Where each element of a mapped resource came from: DICOM tags and a profile rule.

Mapping functions call `ctx.trace(path, tags, rule)`; the context holds a `Recorder` only
when someone asks (the explain command), so a sync pays one `is None` test per call.

Paths name FHIR elements the way they appear in the output, with list indexes:
"ImagingStudy.series[0].bodySite". An element without an entry of its own is explained by
its nearest recorded ancestor (`Recorder.explain`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any


@cache
def tag_label(tag: str) -> str:
    """'00080060' -> '(0008,0060) Modality'; private tags keep their number only."""
    from pydicom.datadict import keyword_for_tag

    number = int(tag, 16)
    keyword = keyword_for_tag(number) if not (number >> 16) % 2 else ""
    return f"({tag[:4]},{tag[4:]})" + (f" {keyword}" if keyword else "")


@dataclass(frozen=True)
class Origin:
    tags: tuple[str, ...] = ()  # DICOM JSON keys, e.g. "00080060"
    rule: str | None = None  # "fhir_profiles/mapping/base.yaml:28"; None: the built-in mapping
    note: str | None = None  # what was done, in a few words

    def as_dict(self) -> dict:
        out: dict = {"tags": [tag_label(t) for t in self.tags], "rule": self.rule or "built-in"}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Recorder:
    """Collects an Origin per element path while one study is mapped."""

    origins: dict[str, Origin] = field(default_factory=dict)

    def record(self, path: str, tags: Iterable[str] = (), rule: str | None = None, note: str | None = None) -> None:
        self.origins[path] = Origin(tuple(tags), rule, note)

    def explain(self, path: str) -> tuple[str, Origin] | None:
        """(recorded path, Origin) for `path` or its nearest recorded ancestor."""
        probe = path
        while probe:
            found = self.origins.get(probe)
            if found is not None:
                return probe, found
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return None


def leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every primitive in a FHIR JSON value, in document order."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{path}[{index}]")
    else:
        yield path, value
