"""The settings of a `type: dimse` source: its config keys, checked, and how it is opened.

Apart from the source itself (app/sources/dimse.py) because every process loads the config,
API nodes included, and only a sync opens an association: pynetdicom is imported when a
source is opened, not when its settings are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.sources.base import ProtocolSettings
from app.sources.dicomweb_settings import DEFAULT_CONCURRENCY
from app.sources.tls import TlsSettings

if TYPE_CHECKING:
    from app.mapping.profile import Profile
    from app.sources.dimse import DimseSource


def check_aet(value: str) -> None:
    """A DICOM AE title (PS3.5 AE VR): 1-16 characters, no backslash or control
    character, not only spaces (leading and trailing spaces are not significant)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("must be a DICOM AE title of 1-16 characters, not only spaces")
    if len(value) > 16:
        raise ValidationError(f"a DICOM AE title has at most 16 characters (this one has {len(value)})")
    if "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValidationError("a DICOM AE title must not contain a backslash or control characters")


class DimseSchema(Schema):
    """The config keys of a `type: dimse` source (app/sources/settings.py joins them); `timeout`,
    `max_results` and `concurrency` are shared with dicomweb."""

    host = fields.String(load_default=None, validate=validate.Length(min=1))
    port = fields.Integer(load_default=104, validate=validate.Range(min=1, max=65535))
    called_aet = fields.String(load_default=None, validate=check_aet)
    calling_aet = fields.String(load_default="FACADE", validate=check_aet)

    @validates_schema(skip_on_field_errors=False)
    def _dimse_keys(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("type") != "dimse":
            return
        # a key that failed its own check is absent here: its error is already reported
        missing: dict[str, list[str]] = {}
        if "host" in data and not data["host"]:
            missing["host"] = ["a dimse source needs a host (the archive's address)"]
        if "called_aet" in data and not data["called_aet"]:
            missing["called_aet"] = ["a dimse source needs a called_aet (the archive's AE title)"]
        if missing:
            raise ValidationError(missing)


@dataclass(frozen=True)
class DimseSettings(ProtocolSettings):
    host: str
    called_aet: str
    port: int = 104
    calling_aet: str = "FACADE"
    timeout: float = 30.0
    #: the most studies the archive answers to one C-FIND (Orthanc: LimitFindResults)
    max_results: int | None = None
    #: studies read at once, so associations open at most
    concurrency: int = DEFAULT_CONCURRENCY
    #: DIMSE over TLS (PS3.15 B.1) with these keys; None: plain TCP
    tls: TlsSettings | None = None

    @classmethod
    def from_data(cls, data: dict, tls: TlsSettings | None = None) -> DimseSettings:
        """The settings of a checked config entry (DimseSchema's keys)."""
        return cls(
            host=data["host"],
            called_aet=data["called_aet"].strip(),
            port=data["port"],
            calling_aet=data["calling_aet"].strip(),
            timeout=data["timeout"],
            max_results=data["max_results"],
            concurrency=DEFAULT_CONCURRENCY if data["concurrency"] is None else data["concurrency"],
            tls=tls,
        )

    def where(self) -> str:
        over = " over TLS" if self.tls is not None else ""
        return f"{self.host}:{self.port}{over} (called {self.called_aet}, calling {self.calling_aet})"

    def open(self, name: str, profile: Profile | None) -> DimseSource:
        from app.sources.dimse import DimseSource

        return DimseSource(
            name,
            self.host,
            self.port,
            self.called_aet,
            calling_aet=self.calling_aet,
            timeout=self.timeout,
            max_results=self.max_results,
            concurrency=self.concurrency,
            tls=self.tls,
        )
