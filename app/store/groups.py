"""The patients each source holds: the members of its Group (Bulk Data Access IG v2.0.0 Group
export; FHIR R4 Group). A source's patients are those its studies contributed (table
`patient_contribution`), read off the primary key's leading column."""

from __future__ import annotations

from app.store.reader import Reader


def group_members(reader: Reader, source: str) -> list[str]:
    """Patient ids of the studies `source` holds, in id order."""
    rows = reader.all("SELECT DISTINCT patient_id FROM patient_contribution WHERE source = ? ORDER BY 1", (source,))
    return [row[0] for row in rows]


def group_size(reader: Reader, source: str) -> int:
    row = reader.one("SELECT COUNT(DISTINCT patient_id) FROM patient_contribution WHERE source = ?", (source,))
    return int(row[0]) if row else 0
