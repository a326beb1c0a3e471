"""Bulk Data export (Bulk Data Access IG v2.0.0), the asynchronous request pattern over HTTP:

- kick-off: `GET [base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export` with
  `Prefer: respond-async`: 202 and `Content-Location` (the status URL) once the job is stored;
- status: `GET` the status URL: 202 with `X-Progress` and `Retry-After` while it runs, 200 with
  the manifest (`transactionTime`, `request`, `requiresAccessToken`, `output`, `error`) and
  `Expires` when done, 500 with an OperationOutcome if it failed, 404 once cancelled or expired;
- cancel: `DELETE` the status URL: 202, the files are removed;
- output files: `GET` each manifest URL, `application/fhir+ndjson`.

Status, files and cancel are the kick-off client's only (another client gets 404, as for a job
that does not exist). The work is done in the background (app/export/worker.py); each request
here is audited as an operation (app/security/audit.py).
"""

from __future__ import annotations

import re
import uuid
from email.utils import formatdate
from pathlib import Path

import orjson
from flask import Blueprint, Flask, Response, current_app, request, send_file

from app.api.hooks import BulkGrant
from app.api.interactions import EXPORT, EXPORT_DELETE, EXPORT_FILE, EXPORT_STATUS, serves
from app.api.outcome import FHIR_JSON, outcome
from app.api.state import ApiState, current_state
from app.clock import micros_to_instant
from app.errors import FhirError
from app.export.params import ExportRequest, KickoffError, parse_kickoff
from app.export.run import Where
from app.export.settings import ExportSettings, export_settings
from app.export.worker import ExportWorker, now_micros
from app.fhir.groups import group_names
from app.fhir.routes import check_format
from app.search.params import RESOURCE_TYPES
from app.store import export_jobs
from app.store.export_jobs import CANCELLED, DONE, FAILED, Job
from app.store.groups import group_members

bp = Blueprint("fhir_bulk", __name__)
EXTENSION = "imaging-facade-export"
NDJSON = "application/fhir+ndjson"


@bp.before_request
def _negotiate() -> None:
    check_format()


def _worker() -> ExportWorker:
    return current_app.extensions[EXTENSION]


def _prefer() -> set[str]:
    return {part.strip().lower() for part in re.split(r"[;,]", request.headers.get("Prefer", "")) if part.strip()}


def _status_url(job_id: str) -> str:
    return f"{current_state().base_url}/$export-status/{job_id}"


def _types(asked: ExportRequest, grant: BulkGrant) -> list[str]:
    """The types to export: those `_type` names, each of which the scopes must cover (403
    otherwise), or every served type they cover."""
    if asked.types is not None:
        refused = [t for t in asked.types if t not in grant.types]
        if refused:
            raise FhirError(
                403,
                "forbidden",
                f"parameter '_type': the access token's scopes do not allow to export {', '.join(refused)} "
                f"(it needs a scope such as system/{refused[0]}.rs)",
            )
        return asked.types
    types = [t for t in RESOURCE_TYPES if t in grant.types]
    if not types:
        raise FhirError(403, "forbidden", "the access token's scopes do not allow to export any type served here")
    refused = sorted(set(asked.filters) - set(types))
    if refused:
        raise FhirError(
            403, "forbidden", f"parameter '_typeFilter': the access token's scopes do not allow to export {refused[0]}"
        )
    return types


def _kickoff(kind: str, group: str | None) -> Response:
    state = current_state()
    worker = _worker()
    prefer = _prefer()
    if "respond-async" not in prefer:
        raise FhirError(400, "invalid", "header 'Prefer': a Bulk Data kick-off needs 'Prefer: respond-async'")
    if group is not None and group not in group_names():
        raise FhirError(404, "not-found", f"Group/{group[:64]} is not known (each source is a Group)")
    items = list(request.args.items(multi=True))
    items = [(k, v) for k, v in items if k not in ("_format", "_pretty")]
    try:
        asked = parse_kickoff(kind, group, items, state.config.timezone, state.base_url, "handling=lenient" in prefer)
    except KickoffError as err:
        raise FhirError(400, err.code, err.diagnostics) from None
    grant = state.hooks.bulk_grant()
    types = _types(asked, grant)
    settings = worker.settings
    if export_jobs.active(state.store.engine, grant.owner) >= settings.max_jobs_per_client:
        raise FhirError(
            429,
            "throttled",
            f"this client has {settings.max_jobs_per_client} exports queued or running; wait for one to finish "
            "or cancel it (DELETE its status URL)",
            headers={"Retry-After": str(settings.retry_after * 5)},
        )
    job_id = uuid.uuid4().hex
    query = request.query_string.decode("latin-1")
    request_url = f"{state.base_url}{request.path[len('/fhir') :]}" + (f"?{query}" if query else "")
    params = {"request": asked.to_json(), "types": types, "narrowing": {t: grant.types[t] for t in types}}
    export_jobs.create(state.store.engine, job_id, grant.owner, request_url, orjson.dumps(params), now_micros())
    worker.start()
    worker.wake()
    body = outcome("informational", f"the export was accepted; poll {_status_url(job_id)}", severity="information")
    return Response(
        orjson.dumps(body), status=202, headers={"Content-Location": _status_url(job_id)}, content_type=FHIR_JSON
    )


@bp.get("/$export")
@serves(EXPORT)
def export_system() -> Response:
    return _kickoff("system", None)


@bp.get("/Patient/$export")
@serves(EXPORT)
def export_patients() -> Response:
    return _kickoff("patient", None)


@bp.get("/Group/<gid>/$export")
@serves(EXPORT)
def export_group(gid: str) -> Response:
    return _kickoff("group", gid)


def _own_job(job_id: str) -> Job:
    """The job, if it exists, is not cancelled or expired, and is this client's; else 404."""
    state = current_state()
    job = export_jobs.get(state.store.engine, job_id) if re.fullmatch(r"[0-9a-f]{32}", job_id) else None
    owner = state.hooks.bulk_grant().owner
    if job is None or job.owner != owner or job.status == CANCELLED:
        raise FhirError(404, "not-found", "no such export (it may have been cancelled or have expired)")
    if job.expires is not None and job.expires <= now_micros():
        raise FhirError(404, "not-found", "this export has expired; its files were removed")
    return job


def _expires(job: Job) -> str:
    assert job.expires is not None
    return formatdate(job.expires / 1_000_000, usegmt=True)


@bp.get("/$export-status/<job_id>")
@serves(EXPORT_STATUS)
def export_status(job_id: str) -> Response:
    job = _own_job(job_id)
    state = current_state()
    settings = _worker().settings
    if job.status == FAILED:
        raise FhirError(500, "exception", f"the export failed: {job.error or 'unknown error'}")
    if job.status != DONE:
        _worker().start()  # a node restarted since the kick-off takes its share of the jobs again
        progress = job.progress or ("queued" if job.transaction_time is None else "started")
        return Response(status=202, headers={"X-Progress": progress[:200], "Retry-After": str(settings.retry_after)})
    assert job.manifest is not None and job.transaction_time is not None
    files = orjson.loads(job.manifest)
    base = f"{state.base_url}/$export-file/{job.id}"
    manifest = {
        "transactionTime": micros_to_instant(job.transaction_time),
        "request": job.request,
        # true whenever the API checks tokens: the files need the kick-off client's token too
        "requiresAccessToken": not state.config.security.open,
        "output": [{"type": f["type"], "url": f"{base}/{f['file']}", "count": f["count"]} for f in files["output"]],
        "error": [{"type": f["type"], "url": f"{base}/{f['file']}", "count": f["count"]} for f in files["error"]],
    }
    return Response(
        orjson.dumps(manifest), status=200, headers={"Expires": _expires(job)}, content_type="application/json"
    )


@bp.delete("/$export-status/<job_id>")
@serves(EXPORT_DELETE)
def export_delete(job_id: str) -> Response:
    job = _own_job(job_id)
    worker = _worker()
    export_jobs.cancel(current_state().store.engine, job.id, now_micros())
    worker.remove_files(job.id)  # its node, if it still runs, stops at its next page and removes them too
    body = outcome("informational", "the export was cancelled and its files removed", severity="information")
    return Response(orjson.dumps(body), status=202, content_type=FHIR_JSON)


@bp.get("/$export-file/<job_id>/<name>")
@serves(EXPORT_FILE)
def export_file(job_id: str, name: str) -> Response:
    job = _own_job(job_id)
    if job.status != DONE or job.manifest is None:
        raise FhirError(404, "not-found", "this export has no files yet")
    files = orjson.loads(job.manifest)
    if name not in {f["file"] for f in files["output"] + files["error"]}:
        raise FhirError(404, "not-found", f"this export has no file {name[:64]!r}")
    path = _worker().job_directory(job.id) / files["run"] / name
    if not path.is_file():
        raise FhirError(404, "not-found", "this export's files were removed")
    response = send_file(path, mimetype=NDJSON, conditional=False, etag=False, max_age=0)
    response.headers["Expires"] = _expires(job)
    return response


def init_app(app: Flask, state: ApiState) -> None:
    """The node's export worker; started at once when the store holds jobs (to finish or expire
    them), else with the first export request."""
    config = state.config
    settings: ExportSettings = config.export or export_settings(None, config.store, _config_root(state))
    worker = ExportWorker(
        state.store.engine,
        state.reader,
        settings,
        Where(config.timezone, state.base_url),
        lambda group: group_members(state.reader, group),
    )
    app.extensions[EXTENSION] = worker
    if export_jobs.any_jobs(state.store.engine):
        worker.start()


def _config_root(state: ApiState) -> Path:
    return state.config.path.parent if state.config.path is not None else Path.cwd()
