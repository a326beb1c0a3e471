"""One AuditEvent per read, search and refused request (IHE Basic Audit Log Patterns, FHIR R4).

An `after_request` hook sees every answer, also the 401 and 403 ones, and writes its event
to disk (the audit spool, app/store/audit_log.py) before the response leaves; if the event
cannot be written the client gets a 500 instead of the data, so nothing is served without
its trail. The event names the interaction (the route's, app/api/interactions.py: type
`rest`, subtype read, vread, history-instance or search-type), who asked (the token's
subject or client, and the network address), this server, the query (base64 of the query
string) and every patient whose data the answer carried: the Patients it returned and the
subjects of the studies it returned (includes too), as the route noted them (app/api/hooks.py).
What the event says is kept as a compact record (app/store/audit_record.py).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, cast
from urllib.parse import urlencode

from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException

from app.api.hooks import Guard, served
from app.api.interactions import current_interaction
from app.api.outcome import outcome_response
from app.api.state import ApiState, current_state
from app.logsafe import describe
from app.search.query import SearchQuery
from app.security.access import current_access
from app.store.audit_record import event_record, outcome_code
from app.store.reader import Reader
from app.store.studies import study_subject, subjects_of

if TYPE_CHECKING:
    from werkzeug.local import LocalProxy

log = logging.getLogger(__name__)


def _query_text(req: Request) -> str:
    """The search as sent: the query string, and a POST _search form body after it."""
    text = req.query_string.decode("latin-1")
    if req.method == "POST" and req.mimetype == "application/x-www-form-urlencoded":
        try:
            form = urlencode(list(req.form.items(multi=True)))
        except HTTPException:  # a body refused as too large (413) is recorded without it
            form = "(body not read)"
        text = f"{text}&{form}" if text and form else text or form
    return text


def touched_patients(reader: Reader, returned: list[tuple[str, str]], contents: dict | None = None) -> list[str]:
    """Patients whose data an answer carries: returned Patients, subjects of returned studies.

    `contents`: study -> its stored JSON, as the answer served it; the subject is read off it,
    and only studies without one at hand are looked up."""
    contents = contents or {}
    patients, studies = set(), set()
    for rtype, rid in returned:
        if rtype == "ImagingStudy":
            subject = study_subject(contents.get(rid))
            if subject is None:
                studies.add(rid)
            else:
                patients.add(subject)
        elif rtype == "Patient":
            patients.add(rid)
    if studies:
        patients.update(subjects_of(reader, sorted(studies)))
    return sorted(patients)


class _EventIds:
    """Unique AuditEvent ids, cheaper than a uuid4 per request: a random prefix per process and a
    counter; ids of one process sort in the order of its events."""

    def __init__(self) -> None:
        self._pid: int | None = None

    def next(self) -> str:
        if self._pid != os.getpid():  # a forked worker draws its own prefix
            self._pid, self._prefix, self._counter = os.getpid(), uuid.uuid4().hex[:20], itertools.count()
        return f"{self._prefix}-{next(self._counter):012x}"


_event_ids = _EventIds()


def record(response: Response) -> Response:
    """Write the request's AuditEvent; a 500 instead of the answer if that fails."""
    interaction = current_interaction()
    if interaction is None or interaction.audit is None:
        return response
    # flask types `request` as the Request it stands for, not as the proxy it is
    req = cast("LocalProxy[Request]", request)._get_current_object()
    state = current_state()
    try:
        status = response.status_code
        found = served()
        patients = touched_patients(state.reader, found.returned, found.contents) if status < 400 else []
        args = req.view_args or {}
        rtype: str | None
        rid: str | None
        if "study" in args:
            rtype, rid = "ImagingStudy", args.get("study")
        else:
            rtype, rid = args.get("rtype"), args.get("rid")
        subtype, action = interaction.audit
        content, index = event_record(
            subtype=subtype,
            action=action,
            status=status,
            base_url=state.base_url,
            access=current_access(),
            address=req.remote_addr,
            query=_query_text(req),
            path=req.path,
            read=(rtype, rid) if rtype and rid else None,
            patients=patients,
        )
        state.audit_log.write(_event_ids.next(), time.time_ns() // 1000, outcome_code(status), content, index)
    except Exception as err:  # noqa: BLE001 - no trail, no data: whatever failed, nothing is served
        log.error("could not record the audit event of a request: %s", describe(err))
        response.close()
        return outcome_response(500, "exception", "the request could not be audited; nothing was served")
    return response


def init_app(app: Flask, state: ApiState) -> None:
    """Record every request's event (when `security.audit` is on), and have an AuditEvent search
    first store what this process spooled, so a trail read through this server is never behind."""
    if state.config.security.audit:
        app.after_request(record)

    def store_spooled_events(query: SearchQuery, _guard: Guard) -> None:
        if query.rtype == "AuditEvent":
            state.audit_log.flush()  # what this process spooled, up to the request before this one

    state.hooks.before_search.append(store_spooled_events)
