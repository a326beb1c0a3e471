"""Patient keys: which Patient resource a study belongs to.

A Patient ID (0010,0020) means nothing without its issuer (the same number at two hospitals
is two people), so a patient is keyed by (Identifier.system, Identifier.value) of the
identifier made from (0010,0020) and its issuer, never by the value alone. The FHIR id is a
digest of that pair: stable across runs and machines, valid as an R4 id, and revealing
neither the Patient ID nor the issuer.

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

from hashlib import sha256

from app.identity.settings import DEFAULT, IdentityConfig

#: prefix of ids keyed by (system, value)
KEYED_PREFIX = "p"
#: prefix of ids of patients known only through one study
STUDY_PREFIX = "s"
_DIGEST_CHARS = 40  # 160 bits: no collision among any realistic number of patients


def _digest(text: str) -> str:
    return sha256(text.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]


def patient_id(system: str, value: str) -> str:
    """Stable FHIR Patient id for the identifier (system, value).

    Both parts are hashed with a length prefix, so ("a|b", "c") and ("a", "b|c") differ.
    """
    if not system or not value:
        raise ValueError("a patient key needs both a system and a value")
    return KEYED_PREFIX + _digest(f"{len(system)}:{system}|{value}")


def patient_id_for_study(study_uid: str) -> str:
    """FHIR id of the Patient of a study that carries no Patient ID."""
    if not study_uid:
        raise ValueError("a study UID is required")
    return STUDY_PREFIX + _digest(f"study:{study_uid}")


def decide_patient_id(identifier: tuple[str, str] | None, study_uid: str, rules: IdentityConfig) -> str:
    """The id of the Patient a study belongs to: keyed by the (system, value) of its Patient ID
    in that system's namespace, or, without a Patient ID, a Patient of the study's own."""
    if identifier is None:
        return patient_id_for_study(study_uid)
    system, value = identifier
    return patient_id(rules.namespace(system), value)


def patient_key(patient: dict, rules: IdentityConfig = DEFAULT) -> tuple[str, str] | None:
    """(namespace system, value) a Patient resource is keyed by, or None for a per-study patient.

    The key is the first identifier (mapping puts the one from (0010,0020) first), and only
    if the resource's id was derived from it: a Patient whose id is not a keyed id has no key.
    """
    identifiers = patient.get("identifier") or []
    if not identifiers:
        return None
    first = identifiers[0]
    system, value = first.get("system"), first.get("value")
    if not system or not value:
        return None
    namespace = rules.namespace(system)
    if patient.get("id") != patient_id(namespace, value):
        return None
    return namespace, value
