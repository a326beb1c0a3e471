"""The patient compartment of a patient-context token: its patient and the records linked to it.

One person often has several Patient records (one per archive or issuer), joined by
`Patient.link` (FHIR R4: `seealso`, `replaced-by`, `replaces`). A token for one of them sees
the records its stored Patient links to, and those whose links point at it: one hop each
way, so a chain of links does not widen the compartment without bound.
"""
from __future__ import annotations

import orjson

from app.store.reader import Reader
from app.store.resources import read_current


def _patient_id(reference: str, base_url: str) -> str | None:
    """The id of a `Patient/<id>` reference (relative, or absolute on this server), else None."""
    if base_url and reference.startswith(base_url + "/"):
        reference = reference[len(base_url) + 1:]
    parts = reference.split("/")
    if len(parts) == 2 and parts[0] == "Patient" and parts[1]:
        return parts[1]
    return None


def linked_patients(reader: Reader, patient: str, base_url: str = "") -> tuple[str, ...]:
    """`patient` and the Patients linked to it one hop either way, sorted."""
    ids = {patient}
    found = read_current(reader, "Patient", patient)
    if found is not None:
        body = orjson.loads(found[2])
        for link in body.get("link", []) if isinstance(body.get("link"), list) else []:
            reference = (link.get("other") or {}).get("reference") if isinstance(link, dict) else None
            if isinstance(reference, str):
                other = _patient_id(reference, base_url)
                if other:
                    ids.add(other)
    rows = reader.all("SELECT rid FROM idx_reference WHERE rtype = ? AND param = ? AND target_id = ? "
                      "AND target_type = ?", ["Patient", "link", patient, "Patient"])
    ids.update(r[0] for r in rows)
    return tuple(sorted(ids))
