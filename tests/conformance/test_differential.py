"""Differential test of FHIR search: the server against an independent FHIRPath evaluator.

A seeded data set shaped like what the facade stores is written through the Store, on SQLite
and on PostgreSQL. Hypothesis draws queries from the data set's own values and near misses of
them, over every parameter of the registry, with the modifiers R4 defines for it (token
`:text` and `:of-type`, reference `:identifier` among them) and now and then a `_sort` of up
to three keys; each query is answered by the server (every page followed) and by
`fhirpath_oracle`, which applies the official R4 SearchParameter expressions and the R4
matching rules. The id sets (and the Bundle total) must agree; for a sorted search, the id
lists across all pages.

Every disagreement found so far was a server bug, now fixed; each has a minimal
reproduction, run on both databases (REPRODUCTIONS and the tests after it), so it cannot
come back unnoticed.

Covering a new search feature: a modifier goes into MODIFIERS (and MODIFIER_ELEMENTS if R4
restricts it to some element types), with a branch in `Queries.value` that draws its values
and one in the oracle's `_clause_test` that matches them; a parameter leaves UNTESTED
(`phonetic`) once the oracle can match it; a result parameter is drawn in `Queries.search`
next to `_sort` and sent by `Server.search`.
"""

from __future__ import annotations

import random
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from app.search.params import BY_RESOURCE, RESOURCE_TYPES, SearchParam, served_targets
from app.store.repository import Store
from app.web import create_app
from tests.support.bundles import next_link
from tests.support.fhirpath_oracle import TEXT_ELEMENTS, Oracle, Ref, Token, date_range

BASE = "http://testserver/fhir"
ZONE = "UTC"
SEED = 20240501
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
RFC3986 = "urn:ietf:rfc:3986"
CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"

#: parameters of the registry the generator leaves alone, and why
UNTESTED = {
    "phonetic": "matching is server-defined (R4 leaves the algorithm open); no spec to check it against",
}
#: modifiers drawn per parameter type ("" is none; repeated entries weigh the draw). Reference
#: parameters also get their target types as modifiers.
MODIFIERS = {
    "token": ["", "", "", "", "not", "missing", "text", "of-type"],
    "string": ["", "", "", "exact", "contains", "missing"],
    "date": ["", "", "", "", "missing"],
    "reference": ["", "", "", "", "type", "missing", "identifier"],
}
#: modifiers R4 defines for some element types only, drawn where the parameter's R4 elements
#: (the oracle reads them from the StructureDefinitions) include one of them
MODIFIER_ELEMENTS = {"text": TEXT_ELEMENTS, "of-type": ("Identifier",)}
#: modifiers that also get a share of the queries of their own, per parameter they apply to
FOCUS_MODIFIERS = ("text", "of-type", "identifier")
DATE_PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]  # ap is server-defined


pytestmark = pytest.mark.npm

# ---------------------------------------------------------------------------- the data set

NAMES = [  # (family, given names): accents, case, several given names, particles
    ("Müller", ["Zoë", "Anna"]),
    ("Mueller", ["Bob"]),
    ("MÜLLER-LÜDENSCHEIDT", ["Jörg"]),
    ("Núñez", ["José", "María", "Luz"]),
    ("van der Berg", ["Ánh"]),
    ("O'Brien", ["Seán"]),
    ("Łukasiewicz", ["Jan"]),
    ("Dvořák", ["Antonín"]),
    ("Strauß", ["Johann", "Baptist"]),
    ("Ødegaard", ["Martin"]),
    ("smith", ["jane"]),
    ("Smith", ["John", "Jacob"]),
    ("Nguyễn", ["Thị", "Minh"]),
    ("Yamada", ["Tarō"]),
    ("Çelik", []),
    (None, None),
]
BIRTH_DATES = ["1970", "1980-02", "1990-03-15", "2000-02-29", "1970-01-01", "1969-12-31", None]
STARTED = [
    "2019",
    "2020",
    "2020-03",
    "2020-03-04",
    "2020-03-05",
    "2020-12-31",
    "2021-01-01",
    "2020-03-04T10:11:12Z",
    "2020-03-04T23:30:00-05:00",
    "2020-03-05T00:30:00+01:00",
    "2020-03-04T10:11:12",
    "2020-12-31T23:59:59Z",
    "2020-12-31T22:00:00-03:00",
    "2021-01-01T00:00:00+00:00",
    "2020-03-04T10:11:12.250+01:00",
    None,
]
BODY_SITES = [
    {"system": SNOMED, "code": "51185008", "display": "Chest"},
    {"system": SNOMED, "code": "69536005", "display": "Head"},
    {"system": SNOMED, "code": "72696002", "display": "Knee"},
    {"display": "FOOBAR"},  # a Body Part Examined that is no PS3.16 term: display only
    None,
]
LATERALITY = [
    {"system": SNOMED, "code": "419465000", "display": "Unilateral right"},
    {"system": SNOMED, "code": "419161000", "display": "Unilateral left"},
    None,
]
#: Coding.display of some modality codings, for token :text (DICOM PS3.16 CID 29 names)
MODALITY_NAMES = {
    "MR": "Magnetic Resonance",
    "CT": "Computed Tomography",
    "US": "Ultrasound",
    "CR": "Computed Radiography",
    "SR": "SR Document",
    "PR": "Presentation State",
    "OT": "Other",
}
SOP_CLASSES = {
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "SR": "1.2.840.10008.5.1.4.1.1.88.11",
    "PR": "1.2.840.10008.5.1.4.1.1.11.1",
    "OT": "1.2.840.10008.5.1.4.1.1.7",
}
SOP_CLASS_NAMES = {
    "MR": "MR Image Storage",
    "CT": "CT Image Storage",
    "US": "Ultrasound Image Storage",
    "CR": "Computed Radiography Image Storage",
    "SR": "Basic Text SR Storage",
    "PR": "Grayscale Softcopy Presentation State Storage",
    "OT": "Secondary Capture Image Storage",
}
REASONS = [
    [{"coding": [{"system": SNOMED, "code": "25064002", "display": "Headache"}], "text": "headache"}],
    [{"text": "follow-up"}],
    [{"coding": [{"code": "R51"}]}],  # a code without a system
    [
        {
            "coding": [{"system": SNOMED, "code": "29857009", "display": "Chest pain"}],
            "text": "Douleur thoracique, aiguë",
        }
    ],
    [
        {
            "coding": [
                {"system": "http://hl7.org/fhir/sid/icd-10", "code": "R51", "display": "Céphalée"},
                {"system": SNOMED, "code": "25064002", "display": "Headache"},
            ]
        },
        {"text": "follow-up"},
    ],
    None,
]
NPI = "http://hl7.org/fhir/sid/us-npi"
PERFORMER_FUNCTION = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRF"}]
}

ENDPOINTS = [
    {
        "resourceType": "Endpoint",
        "id": "pacs-a",
        "status": "active",
        "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-wado-rs", "display": "DICOM WADO-RS"},
        "name": "pacs-a",
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"],
        "address": "http://pacs-a/dicom-web",
    },
    {
        "resourceType": "Endpoint",
        "id": "folder-b",
        "status": "off",
        "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-wado-rs", "display": "DICOM WADO-RS"},
        "name": "Archivé B",
        "identifier": [
            {"system": RFC3986, "value": "urn:uuid:6b1f0c4e-3b1d-4c55-9d7e-000000000b", "type": {"text": "Source UUID"}}
        ],
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "address": "urn:imaging-facade:source:folder-b",
    },
    {
        "resourceType": "Endpoint",
        "id": "archive-c",
        "status": "active",
        "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-qido-rs"},
        "name": "Archive C",
        "managingOrganization": {"reference": "Organization/org-1"},
        "payloadType": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "DICOM"}]}
        ],
        "address": "http://archive-c/dicom-web",
    },
    {
        "resourceType": "Endpoint",
        "id": "lonely-d",
        "status": "error",
        "connectionType": {"system": CONNECTION_TYPE, "code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}],
        "address": "http://lonely-d/",
    },
]


def _random_instant(rng: random.Random) -> str:
    """A dateTime of second (sometimes millisecond) precision, with a zone or without one."""
    moment = datetime(2019, 6, 1) + timedelta(seconds=rng.randrange(2 * 365 * 86400))
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if rng.random() < 0.2:
        text += f".{rng.randrange(1000):03d}"
    return text + rng.choice(["Z", "+01:00", "-05:00", "+05:30", "", "+00:00"])


def _patient(rng: random.Random, n: int) -> dict:
    family, givens = NAMES[n % len(NAMES)]
    mrn_type: dict = {"coding": [{"system": V2_0203, "code": "MR"}]}
    kind = rng.random()
    if kind < 0.3:
        mrn_type["text"] = "Medical Record Number"
    elif kind < 0.5:  # Identifier.type.coding.display: not what :text searches
        mrn_type["coding"][0]["display"] = "Medical record number"
    patient = {
        "resourceType": "Patient",
        "id": f"pat-{n:02d}",
        "identifier": [{"type": mrn_type, "system": "urn:oid:1.2.3.4", "value": str(1000 + n)}],
    }
    if rng.random() < 0.5:  # the same values under another issuer: system|value must tell them apart
        other = {"system": "urn:imaging-facade:source:pacs-a", "value": str(1000 + (n + 3) % len(NAMES))}
        if rng.random() < 0.5:  # typed too: of-type=…|MR|value matches either identifier
            other["type"] = {
                "coding": [{"system": V2_0203, "code": "MR"}, {"system": V2_0203, "code": "PI"}],
                "text": "Numéro de dossier",
            }
        patient["identifier"].append(other)
    if family is not None:
        name: dict = {"family": family}
        if givens:
            name["given"] = list(givens)
        if rng.random() < 0.2:
            name["prefix"] = [rng.choice(["Dr.", "Prof.", "Frau"])]
        if rng.random() < 0.15:
            name["suffix"] = ["Jr."]
        if rng.random() < 0.3:
            name["text"] = f"{family}, {' '.join(givens or [])}"  # a comma: escaped in search values
        patient["name"] = [name]
        if family == "Yamada":
            patient["name"].append(
                {
                    "extension": [
                        {
                            "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
                            "valueCode": "IDE",
                        }
                    ],
                    "family": "山田",
                    "given": ["太郎"],
                }
            )
    gender = rng.choice(["male", "female", "other", "unknown", "female", "male", None])
    if gender:
        patient["gender"] = gender
    birth = rng.choice(BIRTH_DATES + [f"19{rng.randrange(40, 99)}-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}"])
    if birth:
        patient["birthDate"] = birth
    return patient


def _series(rng: random.Random, study_id: str, number: int) -> dict:
    modality = rng.choice(list(SOP_CLASSES))
    series: dict = {"uid": f"{study_id}.{number}", "number": number, "modality": {"system": DCM, "code": modality}}
    if rng.random() < 0.5:
        series["modality"]["display"] = MODALITY_NAMES[modality]
    body_site = rng.choice(BODY_SITES)
    if body_site:
        series["bodySite"] = dict(body_site)
    laterality = rng.choice(LATERALITY)
    if laterality:
        series["laterality"] = dict(laterality)
    performers = rng.choice(
        [
            [{"function": PERFORMER_FUNCTION, "actor": {"display": "Doe^Jane"}}],
            [{"actor": {"display": "Operator^Otto"}}],
            [
                {"actor": {"display": "Operator^Otto", "identifier": {"value": "OTTO"}}}
            ],  # an identifier without a system
            [{"actor": {"reference": "Practitioner/prac-1", "display": "Roe^Richard"}}],
            None,
        ]
    )
    if performers:
        series["performer"] = performers
    if rng.random() < 0.15:
        series["endpoint"] = [
            rng.choice(
                [{"reference": "Endpoint/archive-c"}, {"reference": "http://other.example/fhir/Endpoint/pacs-a"}]
            )
        ]
    sop_class = {"system": RFC3986, "code": "urn:oid:" + SOP_CLASSES[modality]}
    if rng.random() < 0.5:
        sop_class["display"] = SOP_CLASS_NAMES[modality]
    instances = [
        {"uid": f"{series['uid']}.{k}", "number": k, "sopClass": dict(sop_class)}
        for k in range(1, rng.randrange(0, 3) + 1)
    ]
    series["numberOfInstances"] = len(instances)
    if instances:
        series["instance"] = instances
    return series


def _study(rng: random.Random, n: int, patient: dict) -> dict:
    uid = f"1.2.826.0.1.3680043.{n}"
    study: dict = {
        "resourceType": "ImagingStudy",
        "id": uid,
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:" + uid}],
    }
    if rng.random() < 0.8:
        separator = ["", ",", "|", "$"][n % 4]  # characters a search value must escape
        acsn_type: dict = {"coding": [{"system": V2_0203, "code": "ACSN"}]}
        kind = rng.random()
        if kind < 0.3:
            acsn_type["text"] = "Accession Number"
        elif kind < 0.5:
            acsn_type["coding"][0]["display"] = "Accession ID"
        accession = {"type": acsn_type, "value": f"ACC{separator}{n % 11:03d}"}
        system = rng.choice(["urn:oid:9.9", "urn:imaging-facade:accession", None])
        if system:
            accession["system"] = system
        study["identifier"].append(accession)
        based_on = {"type": "ServiceRequest", "identifier": dict(accession)}
        if rng.random() < 0.2:
            based_on["reference"] = f"ServiceRequest/sr-{n % 4}"
        study["basedOn"] = [based_on]
    study["status"] = rng.choice(["available"] * 5 + ["registered", "cancelled", "unknown"])
    series = [_series(rng, uid, i) for i in range(1, rng.randrange(1, 4) + 1)]
    modalities = sorted({s["modality"]["code"] for s in series})
    if rng.random() < 0.15:  # ModalitiesInStudy may list more than the series show
        modalities.append("KO")
    study["modality"] = [{"system": DCM, "code": m} for m in modalities]
    study["subject"] = {"reference": f"Patient/{patient['id']}"}
    if rng.random() < 0.3:  # the patient's MRN as well: what patient:identifier finds
        mrn = patient["identifier"][0]
        study["subject"]["identifier"] = {"system": mrn["system"], "value": mrn["value"]}
    started = rng.choice(STARTED) if rng.random() < 0.6 else _random_instant(rng)
    if started:
        study["started"] = started
    referrer = rng.choice(
        [
            {"display": "Who^Doctor"},
            {"display": "Referring^Rita"},
            {"reference": "Practitioner/prac-2", "display": "Referring^Rita"},
            {"display": "Referring^Rita", "identifier": {"system": NPI, "value": "1234567893"}},
            {"reference": "Practitioner/prac-2", "identifier": {"system": NPI, "value": "1234567893"}},
            {"reference": "PractitionerRole/role-1"},
            None,
        ]
    )
    if referrer:
        study["referrer"] = referrer
    interpreter = rng.choice(
        [
            [{"display": "Reader^Ruth"}],
            [{"reference": "Practitioner/prac-1"}, {"display": "Reader^Ruth"}],
            [{"identifier": {"system": NPI, "value": "1111111112"}}],
            None,
        ]
    )
    if interpreter:
        study["interpreter"] = interpreter
    study["endpoint"] = rng.choice(
        [
            [{"reference": "Endpoint/pacs-a"}],
            [{"reference": "Endpoint/pacs-a"}],
            [{"reference": "Endpoint/folder-b"}],
            [{"reference": f"{BASE}/Endpoint/archive-c"}],  # an absolute URL on this server
            [{"reference": "Endpoint/pacs-a"}, {"reference": "Endpoint/folder-b"}],
        ]
    )
    if rng.random() < 0.1:
        study["encounter"] = {"reference": f"Encounter/enc-{n % 3}"}
    reason = rng.choice(REASONS)
    if reason:
        study["reasonCode"] = reason
    study["numberOfSeries"] = len(series)
    study["numberOfInstances"] = sum(s["numberOfInstances"] for s in series)
    study["series"] = series
    return study


def build_dataset(seed: int = SEED):
    """(endpoints, [(study, patient as that study tells it, source)], resources stored on their own).

    The last are Patients without studies and one study about a Group, which the facade never
    writes but R4 allows: it is what tells `patient` (`subject.where(resolve() is Patient)`)
    from `subject`.
    """
    rng = random.Random(seed)
    patients = [_patient(rng, n) for n in range(len(NAMES) + 3)]
    with_studies, lone = patients[:-3], patients[-3:]
    # records of one person linked both ways (what identity reconciliation writes), and a link
    # to a type this server does not hold: what `link` searches
    lone[0]["link"] = [{"other": {"reference": f"Patient/{lone[1]['id']}"}, "type": "seealso"}]
    lone[1]["link"] = [
        {"other": {"reference": f"Patient/{lone[0]['id']}"}, "type": "seealso"},
        {"other": {"reference": "RelatedPerson/rp-1"}, "type": "seealso"},
    ]
    studies = []
    for n in range(1, 37):
        patient = dict(rng.choice(with_studies))
        if rng.random() < 0.2:  # what an older study said: the Patient shows the latest one's demographics
            patient["gender"] = "unknown"
        source = rng.choice(["pacs-a", "folder-b"])
        studies.append((_study(rng, n, patient), patient, source))
    group_study = _study(rng, 37, with_studies[0])
    group_study["subject"] = {"reference": "Group/grp-1"}
    return ENDPOINTS, studies, [*lone, group_study]


# ---------------------------------------------------------------------------- server and oracle


@dataclass
class Answer:
    ids: list[str]
    total: int | None
    pages: int


class Server:
    """The app over a store holding the given resources, and the oracle over what it serves."""

    def __init__(self, client, resources: list[dict]):
        self.client = client
        stored = []
        for resource in resources:
            response = client.get(f"/fhir/{resource['resourceType']}/{resource['id']}")
            assert response.status_code == 200, response.get_data(as_text=True)
            stored.append(response.get_json())
        self.resources = stored
        self.oracle = Oracle(stored, ZONE, BASE)

    def search(self, rtype: str, items: list[tuple[str, str]], count: int) -> Answer:
        url = f"/fhir/{rtype}?" + urlencode(items + [("_count", str(count))])
        ids, total, pages = [], None, 0
        while url:
            response = self.client.get(url, headers={"Prefer": "handling=strict"})
            assert response.status_code == 200, (rtype, items, response.get_data(as_text=True))
            body = response.get_json()
            if pages == 0:
                total = body.get("total")
            ids += [e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]
            url = next_link(body)
            pages += 1
        return Answer(ids, total, pages)

    def compare(self, rtype: str, items: list[tuple[str, str]], count: int = 100):
        """(server ids, oracle ids, the server's answer) after checking paging returned each match once.

        The ids are sets, or lists in order when `items` hold a `_sort`.
        """
        answer = self.search(rtype, items, count)
        assert len(answer.ids) == len(set(answer.ids)), f"a match on two pages: {answer.ids}"
        sort = [value.split(",") for name, value in items if name == "_sort"]
        expected = self.oracle.search(rtype, [(name, value) for name, value in items if name != "_sort"])
        if set(answer.ids) == expected:
            assert answer.total in (None, len(expected)), f"total {answer.total}, {len(expected)} matches"
        if sort:
            return answer.ids, self.oracle.order(rtype, expected, sort[-1]), answer
        return set(answer.ids), expected, answer

    def explain(self, rtype: str, items, actual, expected) -> str:
        lines = [
            f"GET /fhir/{rtype}?{urlencode(items)}",
            f"  server only: {sorted(set(actual) - set(expected))}",
            f"  oracle only: {sorted(set(expected) - set(actual))}",
        ]
        sort = [value.split(",") for name, value in items if name == "_sort"]
        if sort and set(actual) == set(expected):
            lines.append(f"  server order: {actual}\n  oracle order: {expected}")
            lines += [
                f"  {rid}: sorts by {[self.oracle.sort_value(rtype, rid, key) for key in sort[-1]]}" for rid in expected
            ]
        for rid in sorted(set(actual) ^ set(expected))[:3]:
            resource = next(r for r in self.resources if r["id"] == rid and r["resourceType"] == rtype)
            lines.append(f"  {rid}: {resource}")
        return "\n".join(lines)


def serve(write_config, store_url: str, endpoints, studies, singles) -> tuple[Server, Store]:
    config = write_config(
        {
            "store": store_url,
            "timezone": ZONE,
            "server": {"base_url": BASE, "default_count": 10, "max_count": 1000},
            "security": {"open": True},
            "sources": [],
        }
    )
    store = Store.from_config(config)
    for endpoint in endpoints:
        store.resources.put(endpoint)
    for study, patient, source in studies:
        store.studies.put(study, patient, source)
    for resource in singles:
        store.resources.put(resource)
    if not store_url.startswith("sqlite"):
        # The store never analyzes its tables, and the test cluster runs without autovacuum:
        # on "1 row" estimates PostgreSQL plans nested loops in which a `_has` into a chain
        # takes minutes even on this data set. With statistics it takes milliseconds.
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    client = create_app(config, store).test_client()
    stored = [*endpoints, *(s for s, _, _ in studies), *singles, *{p["id"]: p for _, p, _ in studies}.values()]
    return Server(client, stored), store


@pytest.fixture
def server(store_url, write_config):
    served, store = serve(write_config, store_url, *build_dataset())
    yield served
    store.close()


# ---------------------------------------------------------------------------- queries


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


def _escape(text: str) -> str:
    """Escape what separates search values (R4 search.html#escaping)."""
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


@dataclass(frozen=True)
class Search:
    rtype: str
    items: tuple[tuple[str, str], ...]
    count: int


#: a focus: (resource type, parameter or "_sort", the modifier it tests or None for any)
Focus = tuple[str, str, str | None]


class Queries:
    """Hypothesis strategies for searches over one data set: its own values and near misses.

    Parameters come from the server's registry, so a parameter added there is drawn at once
    (or must be listed in UNTESTED); chains and `_has` follow the registry's reference targets.
    """

    def __init__(self, oracle: Oracle):
        self.oracle = oracle
        self.params = {t: [p for p in BY_RESOURCE[t].values() if p.name not in UNTESTED] for t in RESOURCE_TYPES}
        self.ids = {t: sorted(oracle.by_type.get(t, {})) for t in RESOURCE_TYPES}

    @cache
    def pool(self, rtype: str, name: str, aspect: str = "") -> list:
        """Every value (or `aspect`, see `Oracle.values`) the data set offers to a parameter, once."""
        pool: list = []
        for rid in self.ids[rtype]:
            pool += [v for v in self.oracle.values(rtype, rid, name, aspect) if v not in pool]
        return pool

    @cache
    def reference_identifiers(self, rtype: str) -> list[Token]:
        """The `:identifier` values of every reference parameter of `rtype`: one parameter's are
        near misses of another's, and `patient` and `subject` share an element but not its values."""
        pool: list[Token] = []
        for param in self.params[rtype]:
            if param.type == "reference":
                pool += [v for v in self.pool(rtype, param.name, "identifier") if v not in pool]
        return pool

    @cache
    def modifiers(self, rtype: str, param: SearchParam) -> list[str]:
        types = self.oracle.element_types(rtype, param.name)
        return [m for m in MODIFIERS[param.type] if m not in MODIFIER_ELEMENTS or set(MODIFIER_ELEMENTS[m]) & types]

    @cache
    def chains(self, rtype: str) -> list[tuple[str, str]]:
        """(chain prefix, target type): `patient`, `patient:Patient`, `subject:Patient`..."""
        out = []
        for param in self.params[rtype]:
            if param.type == "reference":
                held = served_targets(param)
                out += [(f"{param.name}:{t}", t) for t in held]
                if len(held) == 1:
                    out.append((param.name, held[0]))
        return out

    @cache
    def reverse(self, rtype: str) -> list[tuple[str, str]]:
        """(source type, reference parameter) pairs `_has` can use to reach `rtype`."""
        return [
            (source, p.name)
            for source in RESOURCE_TYPES
            for p in self.params[source]
            if p.type == "reference" and rtype in served_targets(p)
        ]

    def focuses(self) -> list[Focus]:
        """What gets its own share of the queries: every parameter, every parameter with each of
        FOCUS_MODIFIERS that applies to it and has values for it in the data set (elsewhere
        the modifier is still drawn now and then), and `_sort` on every type."""
        out: list[Focus] = [(t, p.name, None) for t in RESOURCE_TYPES for p in self.params[t]]
        out += [
            (t, p.name, m)
            for t in RESOURCE_TYPES
            for p in self.params[t]
            for m in FOCUS_MODIFIERS
            if m in self.modifiers(t, p) and self.pool(t, p.name, m)
        ]
        return out + [(t, "_sort", None) for t in RESOURCE_TYPES]

    @cache
    def reaching(self, rtype: str) -> list[tuple[str, str]]:
        """(outer type, name prefix) that apply a clause on `rtype` from another type by a chain or `_has`."""
        out = []
        for outer in RESOURCE_TYPES:
            out += [(outer, f"{prefix}.") for prefix, target in self.chains(outer) if target == rtype]
            out += [(outer, f"_has:{source}:{ref}:") for source, ref in self.reverse(outer) if source == rtype]
        return out

    def search(self, focus: Focus) -> st.SearchStrategy[Search]:
        """A search whose first clause tests the `focus` parameter (with its modifier), directly or
        through a chain or `_has`, ANDed with up to two more clauses of any kind, sometimes
        sorted. A `_sort` focus sorts by up to three keys whatever up to two clauses match."""
        rtype, name, modifier = focus
        count = st.sampled_from([4, 10, 100])
        if name == "_sort":

            @st.composite
            def sorted_search(draw):
                items = [draw(self.clause(rtype, 0)) for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2])))]
                return Search(rtype, (*items, ("_sort", draw(self.sort(rtype)))), draw(count))

            return sorted_search()
        param = BY_RESOURCE[rtype][name]

        @st.composite
        def build(draw):
            outer, prefix = draw(
                st.sampled_from([(rtype, "")] * 2 * max(1, len(self.reaching(rtype))) + self.reaching(rtype))
            )
            name, value = draw(self.param_clause(rtype, param, modifier))
            items = [(prefix + name, value)]
            if draw(st.integers(0, 3)) == 0:  # the parameter repeated: both must hold
                name, value = draw(self.param_clause(rtype, param))
                items.append((prefix + name, value))
            # a modifier's matches are few (one accession, one MRN): fewer clauses ANDed to them
            for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2] if modifier is None else [0, 0, 0, 1]))):
                items.append(draw(self.clause(outer, 0)))
            if draw(st.sampled_from([False, False, False, True])):
                items.append(("_sort", draw(self.sort(outer))))
            return Search(outer, tuple(items), draw(count))

        return build()

    @cache
    def sort(self, rtype: str) -> st.SearchStrategy[str]:
        """A `_sort` value: up to three parameters of `rtype`, each ascending or descending (`-`)."""
        keys = st.lists(st.sampled_from([p.name for p in self.params[rtype]]), min_size=1, max_size=3, unique=True)
        return st.tuples(keys, st.lists(st.booleans(), min_size=3, max_size=3)).map(
            lambda drawn: ",".join(("-" if down else "") + key for key, down in zip(*drawn, strict=False))
        )

    @cache
    def clause(self, rtype: str, depth: int) -> st.SearchStrategy[tuple[str, str]]:
        options = [st.sampled_from(self.params[rtype]).flatmap(lambda p: self.param_clause(rtype, p))] * 6
        if depth < 2 and self.chains(rtype):
            options.append(self.chained(rtype, depth))
        if depth < 2 and self.reverse(rtype):
            options += [self.has(rtype, depth)] * 2
        return st.one_of(options)

    @cache
    def chained(self, rtype: str, depth: int):
        @st.composite
        def build(draw):
            prefix, target = draw(st.sampled_from(self.chains(rtype)))
            name, value = draw(self.clause(target, depth + 1))
            return f"{prefix}.{name}", value

        return build()

    @cache
    def has(self, rtype: str, depth: int):
        @st.composite
        def build(draw):
            source, ref = draw(st.sampled_from(self.reverse(rtype)))
            name, value = draw(self.clause(source, depth + 1))
            return f"_has:{source}:{ref}:{name}", value

        return build()

    @cache
    def param_clause(self, rtype: str, param: SearchParam, modifier: str | None = None):
        """`name[:modifier]=value` for one parameter; the modifier is drawn unless given."""

        @st.composite
        def build(draw):
            modifier_ = draw(st.sampled_from(self.modifiers(rtype, param))) if modifier is None else modifier
            if modifier_ == "missing":
                return f"{param.name}:missing", draw(st.sampled_from(["true", "false"]))
            if modifier_ == "type":
                held = [r.type for r in self.pool(rtype, param.name) if r.type]
                modifier_ = draw(st.sampled_from(held * 3 + list(param.targets) if held else param.targets))
            n = draw(st.sampled_from([1, 1, 1, 2, 3]))
            values = [self.value(draw, rtype, param, modifier_) for _ in range(n)]
            return (f"{param.name}:{modifier_}" if modifier_ else param.name), ",".join(values)

        return build()

    def value(self, draw, rtype: str, param: SearchParam, modifier: str) -> str:
        if modifier == "text":
            return self.string(draw, self.pool(rtype, param.name, "text"), "")
        if modifier == "of-type":
            return self.of_type(draw, self.pool(rtype, param.name, "of-type"))
        if modifier == "identifier":  # mostly the parameter's own, else any reference's
            own = self.pool(rtype, param.name, "identifier")
            mostly_own = own and draw(st.sampled_from([True, True, True, False]))
            return self.token(draw, own if mostly_own else self.reference_identifiers(rtype))
        pool = self.pool(rtype, param.name)
        if param.type == "token":
            return self.token(draw, pool)
        if param.type == "string":
            return self.string(draw, pool, modifier)
        if param.type == "date":
            return self.date(draw, pool)
        if param.type == "reference":
            return self.reference(draw, rtype, param, pool, modifier)
        raise AssertionError(param.type)

    @staticmethod
    def _near(draw, text: str) -> str:
        """A near miss of `text`: another case, one character more or fewer, an SQL wildcard."""
        kind = draw(st.sampled_from(["case", "more", "less", "wildcard"]))
        if kind == "case":
            return text.swapcase() if text.swapcase() != text else text + "a"
        if kind == "more":
            return text + draw(st.sampled_from(["0", "x", "_", " "]))
        if kind == "less" and len(text) > 1:
            return text[:-1]
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(["%", "_"])) + text[at + 1 :]

    def token(self, draw, pool: list[Token]) -> str:
        token = draw(st.sampled_from(pool)) if pool else Token("urn:none", "none")
        system, code = token.system or "", token.code or ""
        if draw(st.integers(0, 4)) == 0:
            if draw(st.booleans()) or not code:
                system = draw(st.sampled_from(["urn:other", system + "x", DCM, "urn:oid:1.2.3.4"]))
            else:
                code = self._near(draw, code)
        form = draw(st.sampled_from(["code", "code", "system|code", "system|code", "|code", "system|"]))
        if form == "code" or (form == "system|" and not system) or (form == "system|code" and not system):
            return _escape(code or "none")
        if form == "|code":
            return "|" + _escape(code or "none")
        if form == "system|":
            return _escape(system) + "|"
        return f"{_escape(system)}|{_escape(code or 'none')}"

    def of_type(self, draw, pool: list[tuple]) -> str:
        """`type-system|type-code|value` of a stored Identifier, or with one part another's or a near miss."""
        system, code, value = draw(st.sampled_from(pool)) if pool else ("urn:none", "none", "none")
        miss = draw(st.sampled_from(["", "", "", "system", "code", "value"]))
        if miss == "system":
            system = draw(st.sampled_from(["urn:other", (system or "") + "x", V2_0203]))
        elif miss == "code":
            code = draw(st.sampled_from(["MR", "PI", "ACSN", "PLAC", code.lower()]))
        elif miss == "value":
            value = draw(st.sampled_from([v for _, _, v in pool] + [self._near(draw, value)]))
        return "|".join(_escape(part or "none") for part in (system, code, value))

    def string(self, draw, pool: list[str], modifier: str) -> str:
        text = draw(st.sampled_from(pool)) if pool else "nobody"
        if modifier == "exact":
            text = draw(st.sampled_from([text, text, text.lower(), text.upper(), _strip_accents(text), text + "s"]))
        elif modifier == "contains":
            start = draw(st.integers(0, len(text) - 1))
            end = draw(st.integers(start + 1, len(text)))
            text = text[start:end]
        else:
            text = text[: draw(st.integers(1, len(text)))]
        if modifier != "exact":
            text = draw(st.sampled_from([text, text, text.upper(), text.lower(), _strip_accents(text)]))
        if draw(st.integers(0, 4)) == 0:
            text = self._near(draw, text)
        return _escape(text.strip() or text)

    def date(self, draw, pool: list[str]) -> str:
        prefix = draw(st.sampled_from(DATE_PREFIXES))
        if pool and draw(st.integers(0, 3)) == 0:
            return prefix + draw(st.sampled_from(pool))  # a stored value as it is (milliseconds, no zone...)
        if pool and draw(st.integers(0, 7)):  # the start or end of a stored value's range: boundaries
            low, high = date_range(draw(st.sampled_from(pool)), ZoneInfo(ZONE))
            moment = draw(st.sampled_from([low, low, high, high - timedelta(microseconds=1)]))
        else:
            moment = datetime(1965, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 60 * 365 * 86400)))
        precision = draw(st.sampled_from(["year", "month", "day", "day", "second", "second"]))
        step = draw(st.sampled_from([0, 0, 0, -1, 1]))
        moment += {
            "year": timedelta(days=366),
            "month": timedelta(days=31),
            "day": timedelta(days=1),
            "second": timedelta(seconds=1),
        }[precision] * step
        zone = draw(st.sampled_from([None, "Z", "+01:00", "-05:00", "+14:00"])) if precision == "second" else None
        if zone is None:
            local = moment.astimezone(ZoneInfo(ZONE))
        else:
            offset = 0 if zone == "Z" else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 60 + int(zone[4:]))
            local = moment.astimezone(timezone(timedelta(minutes=offset)))
        text = {"year": "%Y", "month": "%Y-%m", "day": "%Y-%m-%d", "second": "%Y-%m-%dT%H:%M:%S"}[precision]
        return prefix + local.strftime(text) + (zone or "")

    def reference(self, draw, rtype: str, param: SearchParam, pool: list[Ref], modifier: str) -> str:
        ref = draw(st.sampled_from(pool or [Ref(param.targets[0], "nobody")]))
        if ref.url:
            return _escape(ref.url)
        rtype_, rid = ref.type or modifier or param.targets[0], ref.id
        if draw(st.integers(0, 4)) == 0:
            rid = draw(st.sampled_from(self.ids.get(rtype_, []) + [rid + "x", rid[:-1] or "x"]))
        if modifier:  # :Type, then the id alone
            return _escape(rid)
        form = draw(st.sampled_from(["id", "Type/id", "Type/id", "url"]))
        if form == "id":
            return _escape(rid)
        if form == "url":
            return f"{BASE}/{rtype_}/{_escape(rid)}"
        return f"{rtype_}/{_escape(rid)}"


# ---------------------------------------------------------------------------- the property

QUERIES_PER_DATABASE = 600
#: share of the queries per focus (see `Queries.focuses`): by parameter type (dates have the
#: most rules: prefixes, precisions, zones), per modifier of FOCUS_MODIFIERS on a parameter,
#: and for `_sort` on a type
WEIGHT = {"date": 3, "string": 2, "token": 1, "reference": 1, "modifier": 3, "_sort": 12}


def _weight(focus: Focus) -> int:
    rtype, name, modifier = focus
    if name == "_sort":
        return WEIGHT["_sort"]
    return WEIGHT["modifier"] if modifier else WEIGHT[BY_RESOURCE[rtype][name].type]


def test_search_agrees_with_the_fhirpath_oracle(server):
    """Every focus gets its share of the queries (WEIGHT), so none goes untested by chance."""
    queries = Queries(server.oracle)
    focuses = queries.focuses()
    stats: Counter = Counter()

    def check(search: Search):
        items = list(search.items)
        actual, expected, answer = server.compare(search.rtype, items, search.count)
        stats["queries"] += 1
        stats["with matches"] += bool(expected)
        stats["on several pages"] += answer.pages > 1
        stats["sorted"] += isinstance(expected, list)
        stats["sorted, 2+ matches"] += isinstance(expected, list) and len(expected) > 1
        assert actual == expected, server.explain(search.rtype, items, actual, expected)

    weights = {focus: _weight(focus) for focus in focuses}
    for focus in focuses:
        examples = -(-QUERIES_PER_DATABASE * weights[focus] // sum(weights.values()))
        run = given(queries.search(focus))(check)
        settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )(run)()
    print(  # noqa: T201 - the run's coverage, shown with -s
        f"\ndifferential search over {len(focuses)} focuses: " + ", ".join(f"{n} {what}" for what, n in stats.items())
    )
    assert stats["queries"] >= QUERIES_PER_DATABASE
    assert stats["with matches"] >= stats["queries"] // 3, stats


# ---------------------------------------------------------------------------- fixed server bugs


@dataclass(frozen=True)
class Reproduction:
    """A disagreement the property found, reduced to one search over a few resources."""

    name: str
    found: str
    rtype: str
    items: tuple[tuple[str, str], ...]
    resources: tuple[dict, ...]


REPRODUCTIONS = [
    Reproduction(
        "id-not",
        "_id:not=x was answered as _id=x: the :not modifier was dropped for _id",
        "Endpoint",
        (("_id:not", "pacs-a"),),
        (ENDPOINTS[0], ENDPOINTS[1]),
    ),
    Reproduction(
        "id-system",
        "_id=system|x matched the resource x: the system was ignored, though "
        "Resource.id has none (R4 search.html#token: system|code needs the element's system)",
        "Endpoint",
        (("_id", "urn:other|pacs-a"),),
        (ENDPOINTS[0],),
    ),
    Reproduction(
        "absolute-reference",
        "a reference to another server's URL was neither indexed nor searchable, "
        "though R4 search.html#reference matches [parameter]=[absolute url] against it",
        "ImagingStudy",
        (("endpoint", "http://other.example/fhir/Endpoint/pacs-a"),),
        (
            {
                "resourceType": "ImagingStudy",
                "id": "1.2.3",
                "status": "available",
                "subject": {"reference": "Patient/pat-00"},
                "endpoint": [{"reference": "http://other.example/fhir/Endpoint/pacs-a"}],
                "series": [{"uid": "1.2.3.1", "modality": {"system": DCM, "code": "MR"}}],
            },
        ),
    ),
]


def _reproduce(bug: Reproduction, store_url: str, write_config) -> None:
    """Store the bug's resources (a study about a Patient as a sync would, anything else as it
    is), run its search, and compare the server with the oracle."""
    endpoints = [r for r in bug.resources if r["resourceType"] == "Endpoint"]
    about_patients = [
        r
        for r in bug.resources
        if r["resourceType"] == "ImagingStudy" and r["subject"]["reference"].startswith("Patient/")
    ]
    studies = [
        (r, {"resourceType": "Patient", "id": r["subject"]["reference"].split("/")[1]}, "pacs-a")
        for r in about_patients
    ]
    singles = [r for r in bug.resources if r["resourceType"] != "Endpoint" and r not in about_patients]
    served, store = serve(write_config, store_url, endpoints, studies, singles)
    try:
        actual, expected, _ = served.compare(bug.rtype, list(bug.items))
        assert actual == expected, f"{bug.found}\n" + served.explain(bug.rtype, bug.items, actual, expected)
    finally:
        store.close()


@pytest.mark.parametrize("bug", REPRODUCTIONS, ids=[b.name for b in REPRODUCTIONS])
def test_fixed_server_bug_stays_fixed(bug, store_url, write_config):
    _reproduce(bug, store_url, write_config)


# ---------------------------------------------------------------------------- more fixed server bugs
# Each asserts what R4 (or docs/search.md, where R4 leaves it to the server) says; each failed
# before the server was fixed.

GROUP_STUDY = {
    "resourceType": "ImagingStudy",
    "id": "1.2.4",
    "status": "available",
    "subject": {"reference": "Group/grp-1", "identifier": {"system": "urn:example:groups", "value": "g1"}},
    "series": [{"uid": "1.2.4.1", "modality": {"system": DCM, "code": "MR"}}],
}
PATIENT_STUDY = {
    "resourceType": "ImagingStudy",
    "id": "1.2.5",
    "status": "available",
    "subject": {"reference": "Patient/pat-00", "identifier": {"system": "urn:oid:1.2.3.4", "value": "1000"}},
    "series": [{"uid": "1.2.5.1", "modality": {"system": DCM, "code": "MR"}}],
}


@pytest.mark.parametrize(
    "items",
    [
        (("patient:identifier", "urn:example:groups|g1"),),  # the bug: the Group's identifier matches
        (("subject:identifier", "urn:example:groups|g1"),),  # subject takes any type: the Group study
        (("patient:identifier", "urn:oid:1.2.3.4|1000"),),  # a Patient's identifier: the Patient study
    ],
    ids=["patient-finds-group", "subject-finds-group", "patient-finds-patient"],
)
def test_patient_identifier_ignores_a_group_subject(items, store_url, write_config):
    """`patient:identifier` must only test the identifiers of references to Patients.

    R4's `patient` on ImagingStudy is `ImagingStudy.subject.where(resolve() is Patient)`, and
    search.html#reference says the `:identifier` modifier tests the `Reference.identifier` of
    the parameter's references; a subject that is `Group/grp-1` is not one of them, whatever
    identifier it carries. The server indexed `Reference.identifier` under `patient:identifier`
    for every subject, including the Group it leaves out of `patient` itself.
    """
    bug = Reproduction(
        "patient-identifier-of-group",
        "patient:identifier matched a study about a Group",
        "ImagingStudy",
        items,
        (GROUP_STUDY, PATIENT_STUDY),
    )
    _reproduce(bug, store_url, write_config)


def _study_with_endpoint(uid: str, reference: str) -> dict:
    return {
        "resourceType": "ImagingStudy",
        "id": uid,
        "status": "available",
        "subject": {"reference": "Patient/pat-00"},
        "endpoint": [{"reference": reference}],
        "series": [{"uid": f"{uid}.1", "modality": {"system": DCM, "code": "MR"}}],
    }


@pytest.mark.parametrize("sort", ["endpoint", "-endpoint"])
def test_references_to_other_servers_sort_by_type_and_url(sort, store_url, write_config):
    """References to another server's resources sort by type and URL, not in an arbitrary order.

    R4 leaves sort order to the server; docs/search.md sorts references by "Type/id", and one to
    another server by "Type/~URL". The server used to key those by a SHA-1 of the URL, so they
    came out in digest order: `http://d.example/fhir/Endpoint/2` before
    `http://c.example/fhir/Endpoint/1`.
    """
    bug = Reproduction(
        "external-reference-order",
        "references to other servers sorted by a digest",
        "ImagingStudy",
        (("_sort", sort),),
        (
            _study_with_endpoint("1.2.9", "http://c.example/fhir/Endpoint/1"),
            _study_with_endpoint("1.2.8", "http://d.example/fhir/Endpoint/2"),
        ),
    )
    _reproduce(bug, store_url, write_config)


def test_id_order_is_code_point_order_on_any_database(postgres_url, write_config):
    """`_sort=_id`, and the id that breaks every tie, order ids by code point on any database.

    In docs/search.md "ties are broken by id", and the server compares every other sort value by
    code point (`COLLATE "C"` on PostgreSQL, as SQLite compares). `_id` and the tie-break used
    the database's default collation, so on a PostgreSQL database created with a linguistic
    one (ICU `en-US` here; glibc's `en_US.UTF-8`, the default of many installations, orders
    these the same way) `PACS-A` sorted after `archive-c`, and one search ordered its matches
    differently on SQLite and on PostgreSQL.
    """
    name = f"facade_test_{uuid.uuid4().hex[:10]}_icu"
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(
                text(
                    f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                    "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                )
            )
    except DBAPIError as exc:
        engine.dispose()
        pytest.skip(f"this PostgreSQL cannot create a database with an ICU collation: {exc}")
    try:
        endpoints = [dict(ENDPOINTS[0], id="PACS-A"), dict(ENDPOINTS[0], id="archive-c")]
        served, store = serve(write_config, postgres_url.rsplit("/", 1)[0] + f"/{name}", endpoints, [], [])
        try:
            for sort in ("_id", "-_id", "status"):
                items = [("_sort", sort)]
                actual, expected, _ = served.compare("Endpoint", items, count=1)
                assert actual == expected, served.explain("Endpoint", items, actual, expected)
        finally:
            store.close()
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
