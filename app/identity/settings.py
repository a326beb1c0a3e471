"""The `identity:` section of the config: namespaces that are one, and the match thresholds.

Scores are points (log2 likelihood ratios, see app.identity.scoring): a pair at or above
`auto_link` is linked without anyone looking, one at or above `review` waits in the review
queue, anything lower is left alone. `possible` is the lowest score `Patient/$match` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema


class IdentitySchema(Schema):
    class Meta:
        unknown = RAISE

    same_namespace = fields.List(fields.List(fields.String(validate=validate.Length(min=1))), load_default=list)
    auto_link = fields.Float(load_default=18.0)
    review = fields.Float(load_default=10.0)
    possible = fields.Float(load_default=6.0)
    #: false: no probabilistic matching at sync (deterministic keys and manual links only)
    match_on_sync = fields.Boolean(load_default=True)
    #: the Patient id key (HMAC, app/identity/keys.py), as a `${VAR}` reference; None: the key
    #: the store generated and keeps in its settings
    secret = fields.String(load_default=None, validate=validate.Length(min=16))

    @validates("same_namespace")
    def _groups(self, value: list[list[str]], **_: Any) -> None:
        seen: set[str] = set()
        for n, group in enumerate(value):
            if len(group) < 2:
                raise ValidationError(f"group {n} must name at least two systems")
            for system in group:
                if system in seen:
                    raise ValidationError(f"system {system!r} is in more than one group")
                seen.add(system)

    @validates_schema
    def _order(self, data: dict[str, Any], **_: Any) -> None:
        if not data["possible"] <= data["review"] <= data["auto_link"]:
            raise ValidationError("thresholds must satisfy possible <= review <= auto_link", "auto_link")


@dataclass(frozen=True)
class IdentityConfig:
    same_namespace: tuple[tuple[str, ...], ...] = ()
    auto_link: float = 18.0
    review: float = 10.0
    possible: float = 6.0
    match_on_sync: bool = True
    #: system -> the system that names its namespace (the first of its group)
    canonical: dict = field(default_factory=dict, compare=False)
    #: the config's `identity.secret` (None: the store keeps the key)
    secret: str | None = field(default=None, compare=False, repr=False)
    #: the Patient id key in force, which the sync layer resolves against the store
    #: (app/store/patient_ids.py) before anything is mapped; None: no Patient id can be made
    key: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_data(cls, data: dict) -> IdentityConfig:
        groups = tuple(tuple(g) for g in data.get("same_namespace", ()))
        canonical = {system: group[0] for group in groups for system in group}
        return cls(
            groups,
            float(data.get("auto_link", 18.0)),
            float(data.get("review", 10.0)),
            float(data.get("possible", 6.0)),
            bool(data.get("match_on_sync", True)),
            canonical,
            data.get("secret"),
        )

    def with_key(self, key: bytes) -> IdentityConfig:
        """These rules with the deployment's Patient id key in force."""
        return replace(self, key=key)

    def namespace(self, system: str) -> str:
        """The system that stands for `system`'s namespace (itself unless a rule joins it)."""
        return self.canonical.get(system, system)


DEFAULT = IdentityConfig()
