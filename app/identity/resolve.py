"""The deterministic half of identity, between mapping and store: which Patient id a study's
patient gets.

Mapping keys a Patient by (system, value) of its Patient ID (app.identity.keys). Config rules
can say two issuers are one namespace (`identity.same_namespace: [[sysA, sysB]]`, e.g. an OID
and the URI the same hospital is known by elsewhere); then the key uses the group's first
system, so the same value under either is one Patient, carrying both identifiers. Other
Patient IDs are already more identifiers of the same Patient (mapping); one that is another
record's Patient ID makes the two a certain match (app.identity.scoring), linked by the
probabilistic step like any other certain pair, whichever of them was synced first.
"""
from __future__ import annotations

from dataclasses import replace

from app.identity.keys import patient_id, patient_key
from app.identity.settings import IdentityConfig


def resolve(mapped, rules: IdentityConfig):
    """`mapped` (a MappedStudy) with its Patient keyed in its namespace; unchanged if no rule applies."""
    key = patient_key(mapped.patient)
    if key is None:
        return mapped
    system, value = key
    namespace = rules.namespace(system)
    if namespace == system:
        return mapped
    new_id = patient_id(namespace, value)
    patient = dict(mapped.patient, id=new_id)
    study = dict(mapped.imaging_study)
    subject = dict(study.get("subject") or {})
    subject["reference"] = f"Patient/{new_id}"
    study["subject"] = subject
    return replace(mapped, imaging_study=study, patient=patient)
