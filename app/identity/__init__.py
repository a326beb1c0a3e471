"""Patient identity: keys that decide which Patient a study belongs to."""

from app.identity.keys import patient_id, patient_id_for_study, patient_key

__all__ = ["patient_id", "patient_id_for_study", "patient_key"]
