"""A source's settings: what every source has (name, zones, identifier systems, polling,
on-demand, mapping profile), and its protocol's part, checked by that protocol's own schema.

The config file keeps a source's keys in one flat mapping (`sources[n]`); `SourceSchema` is the
keys every source has joined with each protocol's schema (folder_settings.py,
dicomweb_settings.py, dimse_settings.py), so a key is checked wherever it is written, and each
protocol checks its own rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from app.identity.settings import DEFAULT as IDENTITY_DEFAULT
from app.identity.settings import IdentityConfig
from app.ids import valid_id
from app.mapping.context import MappingContext
from app.mapping.profile import Profile
from app.sources.base import ProtocolSettings, Source
from app.sources.dicomweb_settings import DicomwebSchema, DicomwebSettings
from app.sources.dimse_settings import DimseSchema, DimseSettings
from app.sources.folder_settings import FolderSchema, FolderSettings
from app.sources.http import Credentials
from app.sources.tls import TlsSchema, TlsSettings

TYPES = ("folder", "dicomweb", "dimse")


def check_zone(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from exc


def check_uri(value: str) -> None:
    if not isinstance(value, str) or ":" not in value or any(c.isspace() for c in value):
        raise ValidationError(f"{value!r} is not a URI (e.g. urn:oid:1.2.3 or https://hospital.example/mrn)")


def _check_profile(value: object) -> None:
    if not isinstance(value, (str, dict)):
        raise ValidationError("must be the name of a mapping profile file, or a mapping of profile keys")


class OnDemandSchema(Schema):
    class Meta:
        unknown = RAISE

    max_age = fields.Float(required=True, validate=validate.Range(min=0))
    deadline = fields.Float(load_default=5.0, validate=validate.Range(min=0.1, max=300))


class SourceSchema(FolderSchema, DicomwebSchema, DimseSchema):
    """One entry of `sources:`: the keys every source has, and each protocol's."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(TYPES))
    timezone = fields.String(load_default=None, validate=check_zone)
    patient_id_system = fields.String(load_default=None, validate=check_uri)
    accession_system = fields.String(load_default=None, validate=check_uri)
    issuer_systems = fields.Dict(keys=fields.String(), values=fields.String(validate=check_uri), load_default=dict)
    # mapping profile layers (fhir_profiles/README.md): a vendor, and the source's own
    vendor = fields.String(load_default=None, validate=validate.Length(min=1))
    profile = fields.Raw(load_default=None, validate=_check_profile)
    wado_url = fields.URL(load_default=None, require_tld=False)
    # continuous sync (sync --watch, server.watch)
    poll_interval = fields.Float(load_default=None, validate=validate.Range(min=0.2, max=86400))
    full_every = fields.Float(load_default=86400.0, validate=validate.Range(min=10))
    window_overlap_days = fields.Integer(load_default=1, validate=validate.Range(min=0, max=366))
    on_demand = fields.Nested(OnDemandSchema, load_default=None)
    # the CAs trusted and the client certificate shown, over HTTPS and DIMSE over TLS (app/sources/tls.py)
    tls = fields.Nested(TlsSchema, load_default=None)

    @validates("name")
    def _name(self, value: str, **_: Any) -> None:
        if not valid_id(value):
            raise ValidationError(
                "must be 1-64 letters, digits, '-' or '.', because it becomes the id of the source's Endpoint"
            )


@dataclass(frozen=True)
class OnDemandSettings:
    #: seconds: a patient's studies older than this are fetched from the archive before a search
    max_age: float
    #: seconds a search waits for that fetch before answering 503 with Retry-After
    deadline: float = 5.0


@dataclass(frozen=True)
class SourceSettings:
    name: str
    type: str
    timezone: str
    patient_id_system: str
    #: the protocol's own settings: FolderSettings, DicomwebSettings or DimseSettings
    protocol: ProtocolSettings
    accession_system: str | None = None
    issuer_systems: dict = field(default_factory=dict)
    wado_url: str | None = None
    #: how the WADO-RS gateway logs in to `wado_url` (the source's username, password or token,
    #: whatever its type: a folder or DIMSE source's images may sit behind a login too)
    wado_credentials: Credentials = Credentials()
    #: seconds the WADO-RS gateway waits for `wado_url` (the source's `timeout`)
    wado_timeout: float = 30.0
    #: the TLS keys the WADO-RS gateway uses for `wado_url` (the source's `tls`)
    wado_tls: TlsSettings | None = None
    #: the address its Endpoint shows: `wado_url`, or the facade's WADO-RS gateway for it
    endpoint_url: str | None = None
    #: the Endpoint's requires-access-token: true behind the gateway of a server needing tokens
    endpoint_requires_token: bool = False
    #: seconds between incremental polls in watch mode
    poll_interval: float = 60.0
    #: seconds between full reconciliations (complete listings that also find deletions)
    full_every: float = 86400.0
    #: days before the last polled date that a date-window poll asks for again
    window_overlap_days: int = 1
    on_demand: OnDemandSettings | None = None
    #: the merged mapping profile (base, vendor, the source's own); None: the base alone
    profile: Profile | None = field(default=None, repr=False)
    #: the deployment's identity rules (config `identity:`): how the source's patients are keyed
    #: and matched
    identity: IdentityConfig = IDENTITY_DEFAULT

    def open(self) -> Source:
        """The Source that reads this archive."""
        return self.protocol.open(self.name, self.profile)

    def mapping_context(self) -> MappingContext:
        """What mapping needs to know of this source (app/mapping/context.py)."""
        return MappingContext(
            source=self.name,
            timezone=self.timezone,
            patient_id_system=self.patient_id_system,
            issuer_systems=dict(self.issuer_systems),
            accession_system=self.accession_system,
            wado_url=self.endpoint_url or self.wado_url,
            requires_access_token=self.endpoint_requires_token,
            profile=self.profile,
            identity=self.identity,
        )


def source_tls(data: dict, root: Path) -> TlsSettings | None:
    """The TLS keys of a checked `sources[n]` entry, their files checked (paths against `root`);
    ValidationError keyed `tls.<key>` for a file that is missing or wrong."""
    if not data.get("tls"):
        return None
    https = [data.get(key) for key in ("url", "rest_url", "wado_url") if (data.get(key) or "").startswith("https://")]
    if data["type"] != "dimse" and not https:
        where = "its url, rest_url or wado_url" if data["type"] == "dicomweb" else "its wado_url"
        raise ValidationError({"tls": [f"tls is for https:// addresses and DIMSE, and {where} is not https://"]})
    try:
        return TlsSettings.from_data(data["tls"], root)
    except ValidationError as exc:
        raise ValidationError({"tls": exc.messages}) from None


def protocol_settings(data: dict, root: Path, tls: TlsSettings | None = None) -> ProtocolSettings:
    """The protocol part of a checked `sources[n]` entry; relative paths are against `root`;
    `tls`: its checked TLS keys (`source_tls`)."""
    if data["type"] == "folder":
        return FolderSettings(path=(root / data["path"]).resolve())
    if data["type"] == "dicomweb":
        return DicomwebSettings.from_data(data, tls)
    return DimseSettings.from_data(data, tls)
