"""The settings of a `type: dicomweb` source: its config keys, checked, and how it is opened.

Apart from the source itself (app/sources/dicomweb.py) because every process loads the config,
API nodes included, and only a sync or an on-demand fetch queries the archive: dicomweb-client
is imported when a source is opened, not when its settings are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.sources.base import ProtocolSettings
from app.sources.tls import TlsSettings

if TYPE_CHECKING:
    from app.mapping.profile import Profile
    from app.sources.dicomweb import DicomwebSource

#: studies a dicomweb or dimse source reads at once unless `concurrency` says otherwise
DEFAULT_CONCURRENCY = 4
#: the most `concurrency` accepts: each is a thread, a connection and an archive's worker
MAX_CONCURRENCY = 64


def orthanc_rest_url(dicomweb_url: str) -> str | None:
    """Orthanc's REST API root under its DICOMweb URL (…/dicom-web), or None if it is not one."""
    url = dicomweb_url.rstrip("/")
    return url[: -len("/dicom-web")] if url.endswith("/dicom-web") and len(url) > len("/dicom-web") else None


class DicomwebSchema(Schema):
    """The config keys of a `type: dicomweb` source (app/sources/settings.py joins them)."""

    url = fields.URL(load_default=None, require_tld=False, schemes={"http", "https"})
    username = fields.String(load_default=None)
    password = fields.String(load_default=None)
    token = fields.String(load_default=None)
    timeout = fields.Float(load_default=30.0, validate=validate.Range(min=0.1))
    page_size = fields.Integer(load_default=100, validate=validate.Range(min=1, max=10000))
    instance_metadata = fields.Boolean(load_default=False)
    changes = fields.String(
        load_default=None,
        validate=validate.OneOf(
            ["orthanc"], error="must be 'orthanc' (Orthanc's /changes feed is the one change feed supported)"
        ),
    )
    rest_url = fields.URL(load_default=None, require_tld=False, schemes={"http", "https"})
    # dicomweb and dimse: the most studies the archive answers to one query
    max_results = fields.Integer(load_default=None, validate=validate.Range(min=1))
    # dicomweb and dimse: studies read at once (None: DEFAULT_CONCURRENCY)
    concurrency = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_CONCURRENCY))

    @validates_schema(skip_on_field_errors=False)
    def _dicomweb_keys(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("type") == "dicomweb" and not data.get("url"):
            raise ValidationError("a dicomweb source needs a url", "url")
        if data.get("password") and not data.get("username"):
            raise ValidationError("a password needs a username", "username")

    @validates_schema(skip_on_field_errors=False)
    def _change_feed(self, data: dict[str, Any], **_: Any) -> None:
        problems: dict[str, list[str]] = {}
        kind = data.get("type")
        if data.get("changes") is not None and kind != "dicomweb":
            problems["changes"] = ["changes: orthanc is for a dicomweb source on Orthanc (it reads Orthanc's REST API)"]
        if data.get("rest_url") is not None and data.get("changes") is None and "changes" not in problems:
            problems["rest_url"] = ["rest_url is only used with changes: orthanc"]
        if (
            data.get("changes") == "orthanc"
            and kind == "dicomweb"
            and data.get("url")
            and not data.get("rest_url")
            and orthanc_rest_url(data["url"]) is None
        ):
            problems["rest_url"] = [
                "changes: orthanc needs the rest_url of Orthanc's REST API (e.g. "
                "http://pacs:8042), because the url does not end in /dicom-web"
            ]
        if problems:
            raise ValidationError(problems)


@dataclass(frozen=True)
class DicomwebSettings(ProtocolSettings):
    url: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    timeout: float = 30.0
    page_size: int = 100
    instance_metadata: bool = False
    #: "orthanc": follow Orthanc's /changes feed at `rest_url`
    changes: str | None = None
    rest_url: str | None = None
    #: the most studies the archive answers to one query (Orthanc: LimitFindResults)
    max_results: int | None = None
    #: studies read at once, so requests in flight at most
    concurrency: int = DEFAULT_CONCURRENCY
    #: the CAs trusted and the client certificate shown over HTTPS (`tls`)
    tls: TlsSettings | None = None

    @classmethod
    def from_data(cls, data: dict, tls: TlsSettings | None = None) -> DicomwebSettings:
        """The settings of a checked config entry (DicomwebSchema's keys)."""
        rest_url = None
        if data["changes"] == "orthanc":
            rest_url = data["rest_url"] or orthanc_rest_url(data["url"])
            assert rest_url is not None  # DicomwebSchema refuses changes: orthanc without one
            rest_url = rest_url.rstrip("/")
        return cls(
            url=data["url"].rstrip("/"),
            username=data["username"],
            password=data["password"],
            token=data["token"],
            timeout=data["timeout"],
            page_size=data["page_size"],
            instance_metadata=data["instance_metadata"],
            changes=data["changes"],
            rest_url=rest_url,
            max_results=data["max_results"],
            concurrency=DEFAULT_CONCURRENCY if data["concurrency"] is None else data["concurrency"],
            tls=tls,
        )

    def where(self) -> str:
        return self.url

    def open(self, name: str, profile: Profile | None) -> DicomwebSource:
        from app.sources.dicomweb import DicomwebSource
        from app.sources.orthanc_changes import OrthancChanges

        feed: OrthancChanges | None = None
        if self.changes == "orthanc" and self.rest_url:
            feed = OrthancChanges(
                name,
                self.rest_url,
                username=self.username,
                password=self.password,
                token=self.token,
                timeout=self.timeout,
                tls=self.tls,
            )
        return DicomwebSource(
            name,
            self.url,
            username=self.username,
            password=self.password,
            token=self.token,
            timeout=self.timeout,
            page_size=self.page_size,
            instance_metadata=self.instance_metadata,
            max_results=self.max_results,
            private_tags=profile.private_tag_numbers() if profile else (),
            change_feed=feed,
            concurrency=self.concurrency,
            tls=self.tls,
        )
