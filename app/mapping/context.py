"""What mapping needs to know about the source a study came from: plain data, no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MappingContext:
    #: the source's configured name; also the id of its Endpoint resource
    source: str
    #: IANA zone of the archive's local DICOM dates and times (used when a study has no
    #: TimezoneOffsetFromUTC); never silently UTC
    timezone: str
    #: Identifier.system for Patient IDs that carry no issuer at all
    patient_id_system: str
    #: local Issuer of Patient ID (0010,0021) or Issuer of Accession Number -> URI
    issuer_systems: dict = field(default_factory=dict)
    #: Identifier.system for accession numbers without an issuer (None: leave system out)
    accession_system: str | None = None
    #: the WADO-RS base URL the Endpoint points at (None when the source has none)
    wado_url: str | None = None
    #: whether an app presents its SMART access token there (the facade's WADO-RS gateway
    #: on a server that needs tokens), as the Endpoint's requires-access-token extension says
    requires_access_token: bool = False
