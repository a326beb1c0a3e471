"""The `subscriptions:` section of the config: how each API node hands study changes to the
subscriptions and sends their notifications (app/notify/worker.py)."""

from __future__ import annotations

from dataclasses import dataclass

from marshmallow import RAISE, Schema, fields, validate


class NotifySchema(Schema):
    class Meta:
        unknown = RAISE  # a misspelt key is named, not ignored

    #: seconds between a node's looks for study changes and notifications to send
    poll_interval = fields.Float(load_default=0.2, validate=validate.Range(min=0.01, max=60))
    #: seconds a node's claim on a subscription lasts while it sends; a node that died loses it then
    lease = fields.Float(load_default=30.0, validate=validate.Range(min=1, max=3600))
    #: seconds an endpoint has to answer a notification, unless the Subscription's backport-timeout says less
    timeout = fields.Float(load_default=10.0, validate=validate.Range(min=0.1, max=300))
    #: failed sends in a row after which the subscription's status becomes `error`
    max_failures = fields.Integer(load_default=3, validate=validate.Range(min=1, max=1000))
    #: seconds before the first retry; each further failure doubles it, up to retry_max
    retry_base = fields.Float(load_default=1.0, validate=validate.Range(min=0.01, max=3600))
    retry_max = fields.Float(load_default=300.0, validate=validate.Range(min=0.01, max=86400))
    #: events in one notification, unless the Subscription's backport-max-count says less
    max_count = fields.Integer(load_default=20, validate=validate.Range(min=1, max=1000))


@dataclass(frozen=True)
class NotifySettings:
    poll_interval: float = 0.2
    lease: float = 30.0
    timeout: float = 10.0
    max_failures: int = 3
    retry_base: float = 1.0
    retry_max: float = 300.0
    max_count: int = 20
