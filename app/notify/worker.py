"""The notifications of this API node: a background thread that hands recorded study changes to
the subscriptions they match (app/store/subscriptions.py `dispatch`) and sends each
subscription's notifications to its rest-hook endpoint (Subscriptions R5 Backport IG v1.1.0,
"Channels: REST-Hook"): an HTTP POST of the notification Bundle with the channel's headers.

- handshake: a new subscription (status `requested`) gets a `handshake` notification; a 2xx
  answer makes it `active`, anything else `error` (IG "Handshake"); it is tried again with
  backoff, and becomes `active` once it succeeds;
- events: the events not yet acknowledged, oldest first, at most max-count per notification;
  the next notification is sent only after a 2xx (in order, at least once: an event whose 2xx
  was lost is sent again, with its number, so the subscriber can drop the repeat);
- failures: each failed send waits `retry_base * 2^(failures-1)` seconds (at most `retry_max`);
  after `max_failures` in a row the subscription's status is `error`, and `active` again with
  the first send that works;
- heartbeats: a `heartbeat` notification when nothing was sent for backport-heartbeat-period
  seconds.

The store decides which node sends for a subscription (a claim with a lease, as for export
jobs), so with several API nodes each notification is sent by one, and a dead node's
subscriptions are taken up by another once its claim runs out. Events are kept in the store:
a restart resumes where the last acknowledged event left off.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import orjson
import requests
from sqlalchemy.engine import Engine

from app.background import BackgroundLoop
from app.notify.bundle import notification, shown
from app.notify.settings import NotifySettings
from app.store import subscriptions
from app.store.reader import Reader
from app.store.resources import read_current
from app.store.subscriptions import Event, Subscription

log = logging.getLogger(__name__)
_SD = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"


def now_micros() -> int:
    return time.time_ns() // 1000


def _channel_number(resource: dict, name: str) -> int | None:
    for ext in resource.get("channel", {}).get("extension", []):
        if ext.get("url") == f"{_SD}/{name}":
            value = ext.get("valuePositiveInt", ext.get("valueUnsignedInt"))
            return value if isinstance(value, int) else None
    return None


def _headers(resource: dict) -> dict[str, str]:
    headers = {"Content-Type": "application/fhir+json"}
    for header in resource.get("channel", {}).get("header", []):
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    return headers


class NotifyWorker(BackgroundLoop):
    name = "subscription-notify"

    def __init__(self, engine: Engine, reader: Reader, settings: NotifySettings, base_url: str):
        self.engine = engine
        self.reader = reader
        self.settings = settings
        self.base_url = base_url
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.session = requests.Session()
        super().__init__()

    def pause(self) -> float:
        return self.settings.poll_interval

    def step(self) -> bool:
        """Dispatch recorded changes, then send what is due; whether anything was done."""
        worked = subscriptions.dispatch(self.engine) > 0
        lease = int(self.settings.lease * 1_000_000)
        for sub in subscriptions.due(self.engine, self.node, now_micros(), lease):
            if self._stopped:
                break
            self.send(sub)
            worked = True
        return worked

    def send(self, sub: Subscription) -> None:
        """One notification of a claimed subscription: handshake, events or heartbeat."""
        resource = orjson.loads(sub.resource)
        now = now_micros()
        events: list[Event] = []
        if sub.status == "requested" or sub.last_sent == 0:  # never reached: its handshake first
            kind = "handshake"
        elif sub.delivered < sub.events:
            kind = "event-notification"
            count = min(self.settings.max_count, _channel_number(resource, "backport-max-count") or 10**9)
            events = subscriptions.events(self.engine, sub.id, sub.delivered + 1, sub.events, count)
        else:
            kind = "heartbeat"
        content = sub.content
        if content == "full-resource" and not sub.may_read:
            content = "id-only"  # the creator's scopes do not cover the studies themselves
        found: dict[str, bytes] = {}
        if content == "full-resource":
            for event in events:
                current = read_current(self.reader, "ImagingStudy", event.study)
                if current is not None and shown(sub, bytes(current[2])):
                    found[event.study] = bytes(current[2])
        body = orjson.dumps(notification(sub, self.base_url, kind, events, content, found, now))
        timeout = self.settings.timeout
        asked = _channel_number(resource, "backport-timeout")
        if asked:
            timeout = min(timeout, float(asked))
        problem = None
        try:
            answer = self.session.post(
                sub.endpoint, data=body, headers=_headers(resource), timeout=timeout, allow_redirects=False
            )
            answer.close()
            if not 200 <= answer.status_code < 300:
                problem = f"the endpoint answered HTTP {answer.status_code}"
        except requests.RequestException as err:
            problem = f"the endpoint could not be reached ({type(err).__name__})"
        done = now_micros()
        if problem is None:
            delivered = events[-1].number if events else sub.delivered
            subscriptions.sent(self.engine, sub.id, self.node, done, delivered)
            return
        wait = min(self.settings.retry_max, self.settings.retry_base * 2 ** min(sub.failures, 30))
        subscriptions.failed(
            self.engine,
            sub.id,
            self.node,
            done + int(wait * 1_000_000),
            f"{kind}: {problem}",
            self.settings.max_failures,
            kind == "handshake",
        )
