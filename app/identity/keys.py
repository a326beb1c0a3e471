"""Patient keys: which Patient resource a study belongs to.

A Patient ID (0010,0020) means nothing without its issuer (the same number at two hospitals
is two people), so a patient is keyed by (Identifier.system, Identifier.value) of the
identifier made from (0010,0020) and its issuer, never by the value alone. The FHIR id is a
keyed digest of that pair (HMAC-SHA256, RFC 2104, under the deployment's Patient id key):
stable across runs, processes and nodes sharing one store, valid as an R4 id, and revealing
neither the Patient ID nor the issuer. A plain digest would not do: the issuer is public (it
is in the token holder's own Patient) and Patient IDs are short, so anyone could hash every
candidate value until one gives the id. The key lives in the store's settings (or the
config's `identity.secret`); the sync layer hands it in through `IdentityConfig.key`, and
mapping refuses to make an id without it.

Stores made before the key kept `legacy_patient_id`s (unkeyed SHA-256); `imaging-facade db
upgrade` re-keys them (app/identity/rekey.py).

A study without a Patient ID gets a Patient of its own, keyed by the study: it is never
merged with anybody (two anonymous studies are not known to be one person).

Config rules can say two issuers are one namespace (`identity.same_namespace: [[sysA, sysB]]`,
e.g. an OID and the URI the same hospital is known by elsewhere); then the key uses the
group's first system, so the same value under either is one Patient, carrying both
identifiers. `decide_patient_id` is the one place a Patient id is decided; mapping asks it.
Other Patient IDs are more identifiers of the same Patient; one that is another record's
Patient ID makes the two a certain match (app.identity.scoring), linked like any other
certain pair, whichever of them was synced first.
"""

from __future__ import annotations

import hmac
from hashlib import sha256

from app.identity.settings import DEFAULT, IdentityConfig

#: prefix of ids keyed by (system, value)
KEYED_PREFIX = "p"
#: prefix of ids of patients known only through one study
STUDY_PREFIX = "s"
_DIGEST_CHARS = 40  # 160 bits: no collision among any realistic number of patients


class MissingKey(ValueError):
    """A Patient id was asked for without the deployment's key."""


def _digest(key: bytes, text: str) -> str:
    if not key:
        raise MissingKey("a Patient id needs the deployment's Patient id key (IdentityConfig.key)")
    return hmac.new(key, text.encode("utf-8"), sha256).hexdigest()[:_DIGEST_CHARS]


def _keyed_text(system: str, value: str) -> str:
    """Both parts with a length prefix, so ("a|b", "c") and ("a", "b|c") differ."""
    if not system or not value:
        raise ValueError("a patient key needs both a system and a value")
    return f"{len(system)}:{system}|{value}"


def _study_text(study_uid: str) -> str:
    if not study_uid:
        raise ValueError("a study UID is required")
    return f"study:{study_uid}"


def patient_id(system: str, value: str, key: bytes) -> str:
    """Stable FHIR Patient id for the identifier (system, value) under the deployment's key."""
    return KEYED_PREFIX + _digest(key, _keyed_text(system, value))


def patient_id_for_study(study_uid: str, key: bytes) -> str:
    """FHIR id of the Patient of a study that carries no Patient ID."""
    return STUDY_PREFIX + _digest(key, _study_text(study_uid))


def legacy_patient_id(system: str, value: str) -> str:
    """The id stores made before the key gave (unkeyed SHA-256): only a re-key asks for it,
    to find which identifier an old id stands for."""
    return KEYED_PREFIX + sha256(_keyed_text(system, value).encode("utf-8")).hexdigest()[:_DIGEST_CHARS]


def legacy_patient_id_for_study(study_uid: str) -> str:
    return STUDY_PREFIX + sha256(_study_text(study_uid).encode("utf-8")).hexdigest()[:_DIGEST_CHARS]


def rekeyed_unknown(old_id: str, key: bytes) -> str:
    """A new id for an old one whose identifier cannot be found any more (e.g. the namespace
    rules changed since): keyed on the old id itself, so it reveals nothing either, and a
    re-key run twice, or resumed, gives the same."""
    prefix = old_id[:1] if old_id[:1] in (KEYED_PREFIX, STUDY_PREFIX) else KEYED_PREFIX
    return prefix + _digest(key, f"old:{old_id}")


def decide_patient_id(identifier: tuple[str, str] | None, study_uid: str, rules: IdentityConfig) -> str:
    """The id of the Patient a study belongs to: keyed by the (system, value) of its Patient ID
    in that system's namespace, or, without a Patient ID, a Patient of the study's own."""
    key = rules.key or b""
    if identifier is None:
        return patient_id_for_study(study_uid, key)
    system, value = identifier
    return patient_id(rules.namespace(system), value, key)


def patient_key(patient: dict, rules: IdentityConfig = DEFAULT) -> tuple[str, str] | None:
    """(namespace system, value) a Patient resource is keyed by, or None for a per-study patient.

    The key is the first identifier (mapping puts the one from (0010,0020) first), and only
    if the resource's id was derived from it under `rules.key`: a Patient whose id is not a
    keyed id has no key (nor has any, without the deployment's key).
    """
    identifiers = patient.get("identifier") or []
    if not identifiers:
        return None
    first = identifiers[0]
    system, value = first.get("system"), first.get("value")
    if not system or not value:
        return None
    namespace = rules.namespace(system)
    if not rules.key or patient.get("id") != patient_id(namespace, value, rules.key):
        return None
    return namespace, value
