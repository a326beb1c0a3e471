"""What mapping needs to know about the source a study came from: plain data, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from app.identity.settings import DEFAULT as IDENTITY_DEFAULT
from app.identity.settings import IdentityConfig
from app.mapping.profile import Profile, base_profile
from app.mapping.provenance import Recorder


@dataclass(frozen=True)
class MappingContext:
    #: the source's configured name; also the id of its Endpoint resource
    source: str
    #: IANA zone of the archive's local DICOM dates and times (used when a study has no
    #: TimezoneOffsetFromUTC); never silently UTC
    timezone: str
    #: Identifier.system for Patient IDs that carry no issuer at all
    patient_id_system: str
    #: local Issuer of Patient ID (0010,0021) or Issuer of Accession Number -> URI; wins
    #: over the profile's `issuers`
    issuer_systems: dict = field(default_factory=dict)
    #: Identifier.system for accession numbers without an issuer (None: the profile's, if any)
    accession_system: str | None = None
    #: the WADO-RS base URL the Endpoint points at (None when the source has none)
    wado_url: str | None = None
    #: the source's merged mapping profile (None: the base profile alone)
    profile: Profile | None = None
    #: a provenance Recorder while a study is explained; None while syncing
    recorder: Recorder | None = field(default=None, compare=False)
    #: the deployment's identity rules: which issuers are one namespace (the Patient id)
    identity: IdentityConfig = IDENTITY_DEFAULT

    @property
    def rules(self) -> Profile:
        return self.profile if self.profile is not None else base_profile()

    def issuer(self, local: str) -> tuple[str | None, str | None]:
        """(Identifier.system configured for a local issuer, the rule that says so)."""
        if local in self.issuer_systems:
            system = self.issuer_systems[local]
            if self.profile is not None and self.profile.issuers.get(local) == system:
                return system, self.profile.rule("issuers", local)
            return system, None
        system = self.rules.issuers.get(local)
        return system, (self.rules.rule("issuers", local) if system else None)

    def accession_default(self) -> tuple[str | None, str | None]:
        if self.accession_system:
            return self.accession_system, self.rules.rule("accession", "system")
        system = self.rules.accession_system
        return system, (self.rules.rule("accession", "system") if system else None)

    def trace(self, path: str, tags: Iterable[str] = (), rule: str | None = None, note: str | None = None) -> None:
        """Say where an element came from, when someone records it (see provenance.py)."""
        if self.recorder is not None:
            self.recorder.record(path, tags, rule, note)

    #: whether an app presents its SMART access token there (the facade's WADO-RS gateway
    #: on a server that needs tokens), as the Endpoint's requires-access-token extension says
    requires_access_token: bool = False
