"""`:missing` answers for references given as a name alone.

ImagingStudy's `referrer`, `interpreter` and `performer` (series.performer.actor) hold DICOM
person names as a Reference with a display only: no target, so no reference index row, and
`:missing` could not tell one from none. Stores index them now with a presence row
(`idx_string`, param `<name>:present`); this revision writes those rows for the studies an
earlier release stored, reading each study's stored JSON a batch at a time (keyset by id), so
memory stays flat however many studies there are.

Safe to run again: a row that is there already is left as it is.

Revision ID: 0004
Revises: 0003
Created: 2026-12-07
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: studies read per statement
BATCH = 2_000
#: the parameters and where their References are (FHIR R4 ImagingStudy search parameters)
PARAMS = ("referrer", "interpreter", "performer")
PRESENT = ":present"


def _present(study: dict) -> set[str]:
    """Which of PARAMS the study's JSON holds a value of, whatever the value holds."""
    found = set()
    if isinstance(study.get("referrer"), dict):
        found.add("referrer")
    if any(isinstance(r, dict) for r in study.get("interpreter") or []):
        found.add("interpreter")
    for series in study.get("series") or []:
        performers = series.get("performer") if isinstance(series, dict) else None
        if any(isinstance(p, dict) and isinstance(p.get("actor"), dict) for p in performers or []):
            found.add("performer")
    return found


def upgrade() -> None:
    conn = op.get_bind()
    names = [name + PRESENT for name in PARAMS]
    held = sa.text(
        "SELECT rid, param FROM idx_string WHERE rtype = 'ImagingStudy' AND param IN :names AND rid IN :ids"
    ).bindparams(sa.bindparam("names", expanding=True), sa.bindparam("ids", expanding=True))
    add = sa.text(
        "INSERT INTO idx_string (rtype, rid, param, norm, value) VALUES ('ImagingStudy', :rid, :param, '', '')"
    )
    after = ""
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT id, content FROM resource WHERE rtype = 'ImagingStudy' AND id > :after ORDER BY id LIMIT :n"
            ),
            {"after": after, "n": BATCH},
        ).all()
        if not rows:
            return
        there = {tuple(r) for r in conn.execute(held, {"names": names, "ids": [r.id for r in rows]})}
        missing = [
            {"rid": r.id, "param": name + PRESENT}
            for r in rows
            if r.content
            for name in sorted(_present(orjson.loads(r.content)))
            if (r.id, name + PRESENT) not in there
        ]
        if missing:
            conn.execute(add, missing)
        after = rows[-1].id


def downgrade() -> None:
    op.get_bind().execute(sa.text("DELETE FROM idx_string WHERE param LIKE :like"), {"like": "%" + PRESENT})
