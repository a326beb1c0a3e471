"""The FHIR R4 id rule (`[A-Za-z0-9\\-\\.]{1,64}`), in one place.

A DICOM UID (digits and dots, at most 64) is a valid id as it is, so studies keep their
Study Instance UID as id; source names must obey it because they become Endpoint ids.
"""

from __future__ import annotations

import re
from typing import TypeGuard

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def valid_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and FHIR_ID.fullmatch(value) is not None
