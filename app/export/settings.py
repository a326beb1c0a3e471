"""The `export:` section of the config: where Bulk Data output files go, how long they stay,
and how jobs are run (Bulk Data Access IG v2.0.0, "Bulk Data Output File Request": files are
available until the `Expires` the status answer gives, then removed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy.engine import make_url


class ExportSchema(Schema):
    class Meta:
        unknown = RAISE  # a misspelt key is named, not ignored

    #: directory of the output files; default beside an SQLite store's file, else beside the config
    directory = fields.String(load_default=None, validate=validate.Length(min=1))
    #: seconds the files of a finished export stay available (then removed, with the job)
    retention = fields.Integer(load_default=86400, validate=validate.Range(min=60, max=30 * 86400))
    #: resources per ndjson file; a type with more is split over several files
    max_file_resources = fields.Integer(load_default=100_000, validate=validate.Range(min=1, max=10_000_000))
    #: resources read from the store per query (keyset pages: memory stays flat whatever the export's size)
    page_size = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=10_000))
    #: seconds a client is told to wait between status requests (Retry-After)
    retry_after = fields.Integer(load_default=2, validate=validate.Range(min=1, max=3600))
    #: seconds between a node's looks for jobs to run and files to remove
    poll_interval = fields.Float(load_default=1.0, validate=validate.Range(min=0.05, max=600))
    #: seconds a node's claim on a running job lasts unless renewed; a node that died loses it then
    lease = fields.Float(load_default=30.0, validate=validate.Range(min=2, max=3600))
    #: jobs one client may have queued or running at once (more: 429, as the IG advises)
    max_jobs_per_client = fields.Integer(load_default=5, validate=validate.Range(min=1, max=1000))


@dataclass(frozen=True)
class ExportSettings:
    directory: Path
    retention: int = 86400
    max_file_resources: int = 100_000
    page_size: int = 1000
    retry_after: int = 2
    poll_interval: float = 1.0
    lease: float = 30.0
    max_jobs_per_client: int = 5


def export_settings(data: dict | None, store: str, root: Path) -> ExportSettings:
    """The checked `export:` section, its directory resolved: configured (relative to the
    config's folder), else `<store file>.export` beside an SQLite store, else `.export` beside
    the config."""
    data = dict(data or ExportSchema().load({}))
    if data["directory"]:
        directory = (root / data["directory"]).resolve()
    else:
        database = make_url(store).database if store.startswith("sqlite:") else None
        if database and database != ":memory:":
            directory = Path(database).with_name(Path(database).name + ".export")
        else:
            directory = root / ".export"
    data["directory"] = directory
    return ExportSettings(**data)
