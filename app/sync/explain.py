"""`imaging-facade map FILE.dcm`: the FHIR resources one file becomes, and why.

The file is read exactly as a folder source reads it (same attributes, same repairs, the
private attributes the source's profile maps), mapped with the source's context and a
provenance Recorder, and every element of the result is paired with the DICOM tags and the
profile rule (file:line) that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from app.mapping import MappingError, map_endpoint, map_study
from app.mapping.context import MappingContext
from app.mapping.provenance import Recorder, leaves
from app.sources.base import StudyFailure
from app.sources.folder import FolderSource

if TYPE_CHECKING:
    from rich.console import Console


class ExplainError(Exception):
    """The file cannot be explained (missing, not DICOM, not mappable); the reason says why."""


@dataclass
class Explanation:
    resources: list[dict]  # ImagingStudy, Patient, Endpoint
    rows: list[dict]  # one per element: resource, path, value, tags, rule, note, from
    repairs: list[str]
    layers: tuple[str, ...]

    def as_json(self) -> dict:
        return {
            "profileLayers": list(self.layers),
            "resources": self.resources,
            "elements": self.rows,
            "repairs": self.repairs,
        }


def explain_file(path: str | Path, ctx: MappingContext) -> Explanation:
    """Map one DICOM file with `ctx` (its Recorder replaced by a fresh one) and explain it."""
    path = Path(path)
    if not path.is_file():
        raise ExplainError(f"{path}: no such file")
    recorder = Recorder()
    ctx = replace(ctx, recorder=recorder)
    source = FolderSource(
        ctx.source,
        path.parent.resolve(),
        ctx.rules.private_tag_numbers(),
        only=[path.resolve()],
        default_charset=ctx.rules.default_character_set,
    )
    items = list(source.iter_studies())
    if source.stats.get("dicomdir"):
        raise ExplainError(
            f"{path}: a DICOMDIR (the index of a DICOM medium), not an instance: map one of the files it references"
        )
    if not items:
        raise ExplainError(f"{path}: not a DICOM file")
    item = items[0]
    if isinstance(item, StudyFailure):
        raise ExplainError(f"{path}: {item.reason}")
    try:
        mapped = map_study(item, ctx)
        endpoint = map_endpoint(ctx)
    except MappingError as exc:
        raise ExplainError(f"{path}: cannot be mapped: {exc.reason}") from exc
    resources = [mapped.imaging_study, mapped.patient, endpoint]
    return Explanation(
        resources, _rows(resources, recorder), list(item.repairs or []) + mapped.repairs, ctx.rules.layers
    )


def _rows(resources: list[dict], recorder: Recorder) -> list[dict]:
    rows = []
    for resource in resources:
        rtype = resource["resourceType"]
        for path, value in leaves({k: v for k, v in resource.items() if k != "resourceType"}, rtype):
            found = recorder.explain(path)
            row = {"resource": rtype, "path": path, "value": value}
            if found is None:
                row.update(tags=[], rule="built-in", **{"from": None})
            else:
                recorded, origin = found
                row.update(origin.as_dict())
                row["from"] = recorded
            rows.append(row)
    return rows


def render(explanation: Explanation, console: Console) -> None:
    """The explanation as rich tables, one per resource."""
    from rich.markup import escape
    from rich.table import Table

    console.print(f"[bold]profile layers:[/] {escape(' -> '.join(explanation.layers))}")
    for resource in explanation.resources:
        rtype = resource["resourceType"]
        table = Table(title=escape(f"{rtype}/{resource['id']}"), title_justify="left", show_lines=False)
        table.add_column("element", overflow="fold")
        table.add_column("value", overflow="fold", max_width=48)
        table.add_column("DICOM", overflow="fold")
        table.add_column("rule", overflow="fold")
        for row in explanation.rows:
            if row["resource"] != rtype:
                continue
            rule = row["rule"] + (f" ({row['note']})" if row.get("note") else "")
            table.add_row(
                *(
                    escape(text)
                    for text in (row["path"][len(rtype) + 1 :], str(row["value"]), "\n".join(row["tags"]) or "-", rule)
                )
            )
        console.print(table)
    if explanation.repairs:
        console.print("[bold]repairs noted on the study:[/]")
        for note in explanation.repairs:
            console.print(f"  - {note}", markup=False)
