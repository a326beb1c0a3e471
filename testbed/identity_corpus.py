"""A multi-archive corpus for patient identity, synced for real, and how well linking did.

The same people are stored in two or three real Orthanc archives (started like the
integration tests do) under each archive's own Patient IDs and issuer, as header-only
copies of a real pydicom test file whose patient attributes are replaced. The copies carry
what real archives carry: typos in a name, family and given name swapped, a birth date
missing, its day and month transposed or one digit wrong, a middle name added, Japanese
names with ideographic and phonetic groups whose romanization differs. Among the people are
twins (same family name and birth date, another given name, often another sex) and
namesakes (same names, another birth date): different people that must not be linked. Some
copies in archive C name the archive-A record in Other Patient IDs, and some are filed under
archive A's legacy issuer, which the config declares one namespace with A's.

Every archive is then synced through the DICOMweb source into a fresh store, which runs the
identity step, and the automatic links (Patient.link) are compared with the truth:

    .venv/bin/python -m scripts.identity_corpus [--people 300] [--seed 7] [--store URL]

prints precision and recall of the automatic links, the review queue, and any false link
between twins or namesakes. tests/integration/test_identity_corpus.py runs a smaller one.
"""

from __future__ import annotations

import copy
import io
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import combinations
from pathlib import Path

import orjson
import pydicom
import requests
import yaml
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import select

from app.config import load_config
from app.identity.scoring import score
from app.identity.settings import IdentityConfig
from app.store import links
from app.store import tables as t
from app.store.repository import Store
from app.sync import sync_source

ROOT = Path(__file__).resolve().parents[1]

FAMILIES = [
    "Miller",
    "Schmidt",
    "Garcia",
    "Nguyen",
    "Johansson",
    "Kowalski",
    "Rossi",
    "Dubois",
    "Murphy",
    "Novak",
    "Horvath",
    "Jensen",
    "Silva",
    "Petrov",
    "Fischer",
    "Weber",
    "Moreau",
    "Lambert",
    "Bianchi",
    "Romano",
    "Lindqvist",
    "Andersen",
    "Kovacs",
    "Popescu",
    "Ivanova",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Schulz",
    "Koch",
    "Richter",
    "Klein",
    "Wolf",
    "Neumann",
    "Schwarz",
    "Zimmermann",
    "Braun",
    "Hartmann",
    "Lange",
    "Werner",
    "Krause",
    "Lehmann",
    "Kaiser",
    "Fuchs",
    "Peters",
    "Scholz",
    "Moeller",
    "Vogel",
    "Friedrich",
    "Keller",
    "Guenther",
    "Frank",
    "Berger",
    "Winkler",
    "Roth",
    "Beck",
    "Lorenz",
    "Baumann",
    "Franke",
    "Albrecht",
    "Schuster",
    "Simon",
    "Ludwig",
    "Boehm",
    "Winter",
    "Kraus",
    "Martin",
    "Schumacher",
    "Kraemer",
    "Vogt",
    "Stein",
    "Jaeger",
    "Otto",
    "Sommer",
    "Gross",
    "Seidel",
    "Heinrich",
    "Brandt",
    "Haas",
    "Schreiber",
    "Graf",
    "Schulte",
    "Dietrich",
    "Ziegler",
    "Kuhn",
    "Kuehn",
    "Pohl",
    "Engel",
    "Horn",
    "Busch",
    "Bergmann",
    "Thomas",
    "Voigt",
    "Sauer",
    "Arnold",
    "Wolff",
    "Pfeiffer",
    "Okafor",
    "Tanaka",
    "Haddad",
    "Cohen",
    "Oconnor",
]
MALE = [
    "John",
    "Peter",
    "Michael",
    "Thomas",
    "Andreas",
    "Stefan",
    "Markus",
    "Daniel",
    "Lukas",
    "Jonas",
    "Felix",
    "Paul",
    "David",
    "Matthias",
    "Sebastian",
    "Tobias",
    "Florian",
    "Simon",
    "Jan",
    "Martin",
    "Christian",
    "Alexander",
    "Robert",
    "Georg",
    "Karl",
    "Oliver",
    "Philipp",
    "Benjamin",
    "Leon",
    "Marco",
    "Carlos",
    "Pedro",
    "Luca",
    "Mateo",
    "Ivan",
    "Noah",
    "Elias",
    "Anton",
    "Emil",
    "Oskar",
]
FEMALE = [
    "Anna",
    "Maria",
    "Laura",
    "Julia",
    "Sarah",
    "Lisa",
    "Katharina",
    "Sophie",
    "Lena",
    "Hannah",
    "Lea",
    "Johanna",
    "Clara",
    "Emma",
    "Mia",
    "Nina",
    "Eva",
    "Sandra",
    "Claudia",
    "Petra",
    "Sabine",
    "Monika",
    "Andrea",
    "Martina",
    "Susanne",
    "Birgit",
    "Heike",
    "Karin",
    "Elena",
    "Sofia",
    "Lucia",
    "Marta",
    "Ines",
    "Paula",
    "Greta",
    "Ida",
    "Frieda",
    "Alma",
    "Olga",
    "Vera",
]
#: (romanizations, ideographic, phonetic) of Japanese family and given names
JA_FAMILIES = [
    (["Sato", "Satou"], "佐藤", "さとう"),
    (["Suzuki"], "鈴木", "すずき"),
    (["Takahashi"], "高橋", "たかはし"),
    (["Ito", "Itou"], "伊藤", "いとう"),
    (["Watanabe"], "渡辺", "わたなべ"),
    (["Yamamoto"], "山本", "やまもと"),
]
JA_GIVEN = [
    (["Taro", "Tarou"], "太郎", "たろう", "M"),
    (["Yuki"], "由紀", "ゆき", "F"),
    (["Kenji"], "健二", "けんじ", "M"),
    (["Haruka"], "遥", "はるか", "F"),
    (["Shota", "Shouta"], "翔太", "しょうた", "M"),
    (["Aiko"], "愛子", "あいこ", "F"),
]
ARCHIVES = {
    "A": ("HOSP_A", "urn:oid:1.2.826.0.1.3680043.10.1"),
    "B": ("HOSP_B", "urn:oid:1.2.826.0.1.3680043.10.2"),
    "C": ("HOSP_C", "urn:oid:1.2.826.0.1.3680043.10.3"),
}
#: archive A's issuer under its old name: one namespace with A's (identity.same_namespace)
LEGACY_A = ("HOSP_A_OLD", "urn:oid:1.2.826.0.1.3680043.10.1.99")


@dataclass
class Person:
    n: int
    family: str
    given: str
    birth: date
    sex: str
    ja: tuple | None = None  # (family entry, given entry) of JA_FAMILIES / JA_GIVEN
    kin: tuple = ()  # ("twin" | "namesake", other person's n)


@dataclass
class Record:
    person: int
    archive: str
    patient_id: str
    issuer: str
    name: str
    birth: str
    sex: str
    other_ids: list = field(default_factory=list)  # (id, issuer)
    errors: list = field(default_factory=list)


def _birth(rng: random.Random) -> date:
    return date(1930, 1, 1) + timedelta(days=rng.randrange(365 * 75))


def make_people(count: int, rng: random.Random) -> list[Person]:
    people: list[Person] = []
    while len(people) < count:
        n = len(people)
        if rng.random() < 0.06:
            fam, giv = rng.choice(JA_FAMILIES), rng.choice(JA_GIVEN)
            people.append(Person(n, fam[0][0], giv[0][0], _birth(rng), giv[3], ja=(fam, giv)))
        else:
            sex = rng.choice("MF")
            people.append(Person(n, rng.choice(FAMILIES), rng.choice(MALE if sex == "M" else FEMALE), _birth(rng), sex))
        base = people[-1]
        if base.ja is None and len(people) < count and rng.random() < 0.08:  # a twin
            sex = rng.choice([base.sex, "M" if base.sex == "F" else "F"])
            given = rng.choice([g for g in (MALE if sex == "M" else FEMALE) if g != base.given])
            people.append(Person(n + 1, base.family, given, base.birth, sex, kin=("twin", n)))
            base.kin = ("twin", n + 1)
        elif base.ja is None and len(people) < count and rng.random() < 0.08:  # a namesake
            people.append(Person(n + 1, base.family, base.given, _birth(rng), base.sex, kin=("namesake", n)))
            base.kin = ("namesake", n + 1)
    return people


def typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word))
    kind = rng.choice(["swap", "drop", "double", "replace"])
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] * 2 + word[i + 1 :] if i < len(word) else word + word[-1]
    if kind == "swap" and i < len(word) - 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + rng.choice("aeioulnrst") + word[i + 1 :]


def _record(person: Person, archive: str, number: int, rng: random.Random, clean: bool) -> Record:
    family, given, errors = person.family, person.given, []
    birth = person.birth.strftime("%Y%m%d")
    if person.ja:
        (fam_roman, fam_ide, fam_syl), (giv_roman, giv_ide, giv_syl, _) = person.ja
        family, given = rng.choice(fam_roman), rng.choice(giv_roman)  # romanization varies by archive
        name = f"{family.upper()}^{given.upper()}={fam_ide}^{giv_ide}={fam_syl}^{giv_syl}"
    else:
        if not clean:
            roll = rng.random()
            if roll < 0.18:
                family, errors = typo(family, rng), ["family typo"]
            elif roll < 0.32:
                given, errors = typo(given, rng), ["given typo"]
            elif roll < 0.40:
                family, given, errors = given, family, ["names swapped"]
            elif roll < 0.45:
                given, errors = f"{given}^{rng.choice(MALE + FEMALE)}", ["middle name"]
        name = f"{family}^{given}"
    if not clean:
        roll = rng.random()
        d = person.birth
        if roll < 0.10:
            birth, errors = "", errors + ["no birth date"]
        elif roll < 0.15 and d.day <= 12 and d.day != d.month:
            birth, errors = f"{d.year}{d.day:02d}{d.month:02d}", errors + ["day/month transposed"]
        elif roll < 0.20:
            digits = list(birth)
            i = rng.choice([3, 7])  # last digit of the year or of the day: still a valid date
            digits[i] = str((int(digits[i]) + rng.choice([1, 2])) % 10)
            candidate = "".join(digits)
            try:
                date(int(candidate[:4]), int(candidate[4:6]), int(candidate[6:]))
                birth, errors = candidate, errors + ["birth digit typo"]
            except ValueError:
                pass
    issuer = ARCHIVES[archive][0]
    return Record(person.n, archive, f"{number:06d}", issuer, name, birth, person.sex, errors=errors)


def make_records(people: list[Person], rng: random.Random) -> list[Record]:
    """Each person in one to three archives; IDs numbered per archive (so they collide across)."""
    counters = {a: 100000 + rng.randrange(50) for a in ARCHIVES}
    records: list[Record] = []
    for person in people:
        count = rng.choices([1, 2, 3], weights=[2, 5, 3])[0]
        archives = sorted(rng.sample(sorted(ARCHIVES), count))
        made: dict[str, Record] = {}
        for k, archive in enumerate(archives):
            counters[archive] += 1
            record = _record(person, archive, counters[archive], rng, clean=k == 0)
            if archive == "C" and "A" in made and rng.random() < 0.3:
                if rng.random() < 0.5:  # C knows A's number: Other Patient IDs
                    record.other_ids.append((made["A"].patient_id, ARCHIVES["A"][0]))
                    record.errors.append("A's ID in Other Patient IDs")
                else:  # filed under A's number and A's legacy issuer
                    record.patient_id, record.issuer = made["A"].patient_id, LEGACY_A[0]
                    record.errors.append("A's ID under A's legacy issuer")
            made[archive] = record
            records.append(record)
    return records


def dicom_bytes(record: Record, base: Dataset, rng: random.Random) -> bytes:
    ds = copy.deepcopy(base)  # a shallow copy would share its elements with `base`
    ds.PatientName = record.name
    ds.PatientID = record.patient_id
    ds.IssuerOfPatientID = record.issuer
    ds.PatientBirthDate = record.birth
    ds.PatientSex = record.sex
    if record.other_ids:
        items = []
        for value, issuer in record.other_ids:
            item = Dataset()
            item.PatientID = value
            item.IssuerOfPatientID = issuer
            item.TypeOfPatientID = "TEXT"
            items.append(item)
        ds.OtherPatientIDsSequence = Sequence(items)
    if any(ord(c) > 127 for c in record.name):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = (date(2015, 1, 1) + timedelta(days=rng.randrange(3000))).strftime("%Y%m%d")
    ds.AccessionNumber = f"ACC{rng.randrange(10**7):07d}"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def base_dataset() -> Dataset:
    """A real CT header from pydicom's test data, without its pixels (headers are all we need)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword in ("PixelData", "OtherPatientIDs", "OtherPatientIDsSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def store_records(records: list[Record], servers: dict, rng: random.Random) -> None:
    base = base_dataset()
    session = requests.Session()
    for record in records:
        server = servers[record.archive]
        response = session.post(
            server.url + "/instances",
            data=dicom_bytes(record, base, rng),
            headers={"Content-Type": "application/dicom"},
            timeout=60,
        )
        response.raise_for_status()


def write_config(directory: Path, store_url: str, servers: dict) -> Path:
    issuers = {issuer: system for issuer, system in ARCHIVES.values()}
    issuers[LEGACY_A[0]] = LEGACY_A[1]
    config = {
        "store": store_url,
        "security": {"open": True},
        "identity": {"same_namespace": [[ARCHIVES["A"][1], LEGACY_A[1]]]},
        "sources": [
            {
                "name": f"pacs-{a.lower()}",
                "type": "dicomweb",
                "url": servers[a].dicomweb_url,
                "issuer_systems": issuers,
                "instance_metadata": a == "C",
            }
            for a in sorted(servers)
        ],
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Evaluation:
    patients: int
    true_pairs: set
    linked: set
    review: set
    kin_pairs: dict  # pair -> "twin" | "namesake"
    #: why pairs of one person were not linked: their explanation's non-agreeing features
    missed: Counter = field(default_factory=Counter)
    #: Patients holding a record under archive A's issuer and one under its legacy name
    namespace_merged: int = 0
    #: pairs where one record names the other's Patient ID in Other Patient IDs
    other_id_pairs: set = field(default_factory=set)

    @property
    def precision(self) -> float:
        return len(self.linked & self.true_pairs) / len(self.linked) if self.linked else 1.0

    @property
    def recall(self) -> float:
        return len(self.linked & self.true_pairs) / len(self.true_pairs) if self.true_pairs else 1.0

    @property
    def false_links(self) -> set:
        return self.linked - self.true_pairs

    @property
    def kin_links(self) -> dict:
        return {p: k for p, k in self.kin_pairs.items() if p in self.linked}

    def report(self) -> str:
        hits = len(self.linked & self.true_pairs)
        lines = [
            f"patients stored: {self.patients}",
            f"record pairs of one person (truth): {len(self.true_pairs)}",
            f"automatic links: {len(self.linked)} ({hits} right, {len(self.false_links)} wrong)",
            f"precision: {self.precision:.4f}   recall: {self.recall:.4f}",
            f"review queue: {len(self.review)} pairs ({len(self.review & self.true_pairs)} of one person); "
            f"recall counting reviewed pairs as linked: "
            f"{len((self.linked | self.review) & self.true_pairs) / max(1, len(self.true_pairs)):.4f}",
            f"twin/namesake pairs among the records: {len(self.kin_pairs)}; linked: {len(self.kin_links)}",
            f"records joined by identity.same_namespace (A's legacy issuer): {self.namespace_merged} Patients",
            f"pairs named by Other Patient IDs: {len(self.other_id_pairs)}; linked: "
            f"{len(self.other_id_pairs & self.linked)}",
            "pairs of one person not linked, by what disagreed:",
        ]
        lines += [f"  {count:4d}  {reason}" for reason, count in self.missed.most_common(12)]
        return "\n".join(lines)


def evaluate(store: Store, records: list[Record], people: list[Person], rules: IdentityConfig) -> Evaluation:
    """Compare the store's links with the truth: which stored Patient is whose record."""
    system_of = {issuer: system for issuer, system in [*ARCHIVES.values(), LEGACY_A]}
    person_of = {(system_of[r.issuer], r.patient_id): r.person for r in records}
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.Resource.id, t.Resource.content).where(t.Resource.rtype == "Patient")).all()
        pairs = list(links.iter_links(conn))
    owner: dict[str, int] = {}
    namespace_merged = 0
    holder: dict[tuple, str] = {}
    for rid, content in rows:
        patient = orjson.loads(content)
        systems = {i["system"] for i in patient.get("identifier", [])}
        namespace_merged += {ARCHIVES["A"][1], LEGACY_A[1]} <= systems
        for i in patient.get("identifier", [])[:1]:
            holder[(i["system"], i["value"])] = rid
        found = {
            person_of[(i["system"], i["value"])]
            for i in patient.get("identifier", [])
            if (i["system"], i["value"]) in person_of
        }
        if len(found) != 1:
            raise AssertionError(
                f"Patient/{rid} holds the records of {len(found)} people: "
                f"{[(i.get('system'), i.get('value')) for i in patient.get('identifier', [])]}"
            )
        owner[rid] = found.pop()
    ids = sorted(owner)
    true_pairs = {(a, b) for a, b in combinations(ids, 2) if owner[a] == owner[b]}
    kin = {}
    for a, b in combinations(ids, 2):
        pa, pb = people[owner[a]], people[owner[b]]
        if pa.kin and pa.kin[1] == pb.n:
            kin[(a, b)] = pa.kin[0]
    linked = {(p.a, p.b) for p in pairs if p.status in links.LINKED}
    review = {(p.a, p.b) for p in pairs if p.status == "review"}
    missed: Counter = Counter()
    scored = {(p.a, p.b): p for p in pairs}
    for pair in true_pairs - linked:
        row = scored.get(pair)
        if row is None:
            with store.engine.connect() as conn:
                feats = links.features_of(conn, list(pair))
            result = score(feats[pair[0]], feats[pair[1]])
            explanation, where = (
                result.as_dict(),
                ("not a candidate (no blocking key in common)" if result.points >= rules.review else "below review"),
            )
        else:
            explanation, where = row.explanation, row.status
        weak = [
            f"{c['feature']}: {c['reason']}"
            for c in explanation["contributions"]
            if c["points"] < 4 and not c["feature"].startswith("sex")
        ]
        missed[f"{where}, {explanation['points']:g} points; " + "; ".join(weak)] += 1
    other_id_pairs = set()
    for r in records:
        for value, issuer in r.other_ids:
            mine = holder.get((system_of[r.issuer], r.patient_id))
            theirs = holder.get((system_of[issuer], value))
            if mine and theirs and mine != theirs:
                other_id_pairs.add(tuple(sorted((mine, theirs))))
    return Evaluation(len(ids), true_pairs, linked, review, kin, missed, namespace_merged, other_id_pairs)


def run(people_count: int, seed: int, store_url: str | None, workdir: Path) -> Evaluation:
    from testbed.orthanc import OrthancServer

    rng = random.Random(seed)
    people = make_people(people_count, rng)
    records = make_records(people, rng)
    servers = {a: OrthancServer() for a in sorted(ARCHIVES)}
    try:
        for server in servers.values():
            server.start()
        store_records(records, servers, rng)
        config = load_config(write_config(workdir, store_url or f"sqlite:///{workdir / 'facade.db'}", servers))
        store = Store.from_config(config)
        try:
            for src in config.sources:
                summary = sync_source(store, src)
                if summary.error or summary.failed:
                    raise RuntimeError(f"sync of {src.name}: {summary.error or summary.failed} failed")
            return evaluate(store, records, people, config.identity)
        finally:
            store.close()
    finally:
        for server in servers.values():
            server.stop()
