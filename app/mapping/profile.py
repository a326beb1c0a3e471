"""Mapping profiles: the per-archive rules the mapping consults, written as YAML layers.

A source's profile is three layers, each optional but the first:

    fhir_profiles/mapping/base.yaml          what every source starts from
    fhir_profiles/mapping/vendors/<v>.yaml   the source's `vendor` (or a file it names)
    the source's own layer                   `profile:` in its config: a file, or the
                                             mapping written there; plus the older keys
                                             patient_id_system, accession_system and
                                             issuer_systems, which are shorthand for it

Merge rule: mappings merge key by key, a later layer's value replacing an earlier one's
(so `issuers` and `modality.synonyms` entries add up, and `PET: null` removes the base
synonym PET); lists replace, except `private_tags`, whose rules add up (a later rule for
the same creator, group and element replaces the earlier one).

Each layer is checked on its own (profile_layer.py, by the schema of profile_schema.py), so an
error names the file and the line it is on. The merged result is a frozen `Profile`: plain data
the mapping reads without any I/O, which also remembers the file and line of every rule
(`rule(...)`) so the explain command can cite them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from app.mapping.profile_layer import Layer, ProfileError, check_layer, read_layer, shown_path
from app.mapping.profile_schema import EXTENSION_BASE, PRIVATE_TARGETS, snomed_meanings

#: the bundled profiles: fhir_profiles/mapping next to the app package
PROFILES_DIR = Path(__file__).resolve().parents[2] / "fhir_profiles" / "mapping"
BASE_FILE = PROFILES_DIR / "base.yaml"
VENDORS_DIR = PROFILES_DIR / "vendors"


# --- the merged profile -----------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateTag:
    creator: str
    group: int
    element: int  # the low byte: the tag is (group, block << 8 | element)
    level: str  # "study" or "series"
    target: str | None  # a FHIR element of PRIVATE_TARGETS …
    extension: str | None  # … or our extension URL
    rule: str  # file:line

    @property
    def label(self) -> str:
        return f"({self.group:04X},xx{self.element:02X}) of {self.creator!r}"


@dataclass(frozen=True)
class Profile:
    """The merged layers of one source: what mapping reads, and where each rule was written."""

    layers: tuple[str, ...]
    patient_id_system: str | None = None
    accession_system: str | None = None
    issuers: dict = field(default_factory=dict)
    modality_synonyms: dict = field(default_factory=dict)  # upper-case value -> code
    body_parts: dict = field(default_factory=dict)  # normalized term -> (code, meaning)
    institution_location: bool = True
    institution_names: dict = field(default_factory=dict)  # normalized variant -> name
    institution_default: str | None = None
    name_format: str = "dicom"
    date_formats: tuple = ()
    #: Specific Character Set assumed for files that declare none (None: the DICOM default)
    default_character_set: str | None = None
    requires_access_token: bool = False
    private_tags: tuple = ()
    rules: dict = field(default_factory=dict, compare=False, repr=False)  # key path -> "file:line"

    def rule(self, *path: str | int) -> str | None:
        """Where the rule at `path` (e.g. "issuers", "HOSP_A") was written, as file:line."""
        return self.rules.get(tuple(path))

    def private_tag_numbers(self) -> list[int]:
        """Every tag a private rule may read: the creator slots (gggg,0010-00FF) and the
        rule's element in each block, for sources that must ask for tags by number."""
        out: set[int] = set()
        for rule in self.private_tags:
            for block in range(0x10, 0x100):
                out.add(rule.group << 16 | block)
                out.add(rule.group << 16 | block << 8 | rule.element)
        return sorted(out)


_NOT_ALNUM = re.compile(r"[^A-Z0-9]")


def body_part_key(value: str) -> str:
    """Body Part Examined as looked up: capitals, no spaces or punctuation ("Whole Body" ->
    WHOLEBODY); CS allows capitals, digits, space and underscore, archives write more."""
    return _NOT_ALNUM.sub("", value.upper())


def institution_key(value: str) -> str:
    return re.sub(r"[^0-9a-z]", "", value.casefold())


@cache
def _cid4031() -> list:
    from pydicom.sr.codedict import codes

    cid = codes.cid4031
    return [
        (code.value, code.meaning)
        for code in (getattr(cid, name) for name in cid.dir())
        if code.scheme_designator == "SCT"
    ]


@cache
def _cid4031_meanings() -> dict:
    """Each CID 4031 concept under its meaning in capitals: "CHEST" -> (code, meaning)."""
    return {body_part_key(meaning): (code, meaning) for code, meaning in _cid4031()}


def body_part_meaning(code: str) -> str:
    """The display of a SNOMED CT body part code: its CID 4031 meaning, else PS3.16's."""
    return dict(_cid4031()).get(code) or snomed_meanings()[code]


def merge(layers: list[Layer]) -> Profile:
    """One Profile from layers, earliest first (see the module doc for the rule)."""
    values, rules, private = _collect(layers)
    body_parts = _body_parts(values, rules)
    synonyms = _keyed(values, rules, ("modality", "synonyms"), ("modality", "synonym"), str.upper)
    names = _keyed(values, rules, ("institution", "names"), ("institution", "name"), institution_key)
    return Profile(
        layers=tuple(layer.label for layer in layers),
        patient_id_system=_one(values, "patient_id", "system"),
        accession_system=_one(values, "accession", "system"),
        issuers=_table(values, ("issuers",)),
        modality_synonyms=synonyms,
        body_parts=body_parts,
        institution_location=_one(values, "institution", "location", default=True),
        institution_names=names,
        institution_default=_one(values, "institution", "default"),
        name_format=_one(values, "names", "format", default="dicom"),
        date_formats=tuple(_one(values, "dates", "formats", default=())),
        default_character_set=_one(values, "character_set", "default"),
        requires_access_token=_one(values, "endpoint", "requires_access_token", default=False),
        private_tags=tuple(private.values()),
        rules=rules,
    )


def _collect(layers: list[Layer]) -> tuple[dict[tuple, object], dict[tuple, str], dict[tuple, PrivateTag]]:
    """(value, rule) of every key path, the last layer's winning, and the private rules by
    (creator, group, element)."""
    values: dict[tuple, object] = {}
    rules: dict[tuple, str] = {}
    private: dict[tuple, PrivateTag] = {}
    for layer in layers:
        data = dict(layer.data)
        tags = data.pop("private_tags", None) or []
        data.pop("vendor", None)
        data.pop("description", None)
        _walk(data, (), layer, values, rules)
        for index, item in enumerate(tags):
            group, element = int(item["group"], 16), int(item["element"], 16)
            target = item.get("target")
            level = PRIVATE_TARGETS[target] if target else item.get("level", "study")
            private[(item["creator"], group, element)] = PrivateTag(
                creator=item["creator"],
                group=group,
                element=element,
                level=level,
                target=target,
                extension=EXTENSION_BASE + item["extension"] if item.get("extension") else None,
                rule=layer.where(("private_tags", index)),
            )
    return values, rules, private


def _walk(node: dict, path: tuple, layer: Layer, values: dict, rules: dict) -> None:
    """Every leaf of one layer's mapping into `values`, and where it was written into `rules`
    (an empty mapping too: it still says where its section is)."""
    for key, value in node.items():
        here = path + (key,)
        if isinstance(value, dict):
            if not value:
                rules.setdefault(here, layer.where(here))
            _walk(value, here, layer, values, rules)
        else:
            values[here] = value
            rules[here] = layer.where(here)


def _table(values: dict, prefix: tuple) -> dict:
    """The entries of the mapping at `prefix`, without the ones a later layer removed (null)."""
    return {
        path[len(prefix)]: value
        for path, value in values.items()
        if len(path) == len(prefix) + 1 and path[: len(prefix)] == prefix and value is not None
    }


def _one(values: dict, *path: str, default: Any = None) -> Any:
    """The value at `path` (of the type the layer schema checked), else `default`."""
    value = values.get(path)
    return default if value is None else value


def _body_parts(values: dict, rules: dict) -> dict:
    """Normalized term -> (SNOMED CT code, meaning): CID 4031's meanings unless the profile
    turns them off, then the profile's own terms."""
    body_parts: dict = {}
    if _one(values, "body_part", "cid4031_meanings", default=True):
        body_parts.update(_cid4031_meanings())
    terms = _table(values, ("body_part", "terms"))
    for term, code in terms.items():
        body_parts[body_part_key(term)] = (code, body_part_meaning(code))
    for term in terms:
        rules[("body_part", "term", body_part_key(term))] = rules[("body_part", "terms", term)]
    return body_parts


def _keyed(values: dict, rules: dict, section: tuple, rule_path: tuple, key: Callable[[str], str]) -> dict:
    """The table at `section` under normalized keys, each entry's rule also kept under
    `rule_path` + normalized key, where the mapping looks it up."""
    out = {}
    for written, value in _table(values, section).items():
        out[key(written)] = value
        rules[(*rule_path, key(written))] = rules[(*section, written)]
    return out


@cache
def base_layer() -> Layer:
    return read_layer(BASE_FILE, "fhir_profiles/mapping/base.yaml")


@cache
def base_profile() -> Profile:
    """The base profile alone: what a MappingContext without a profile maps with."""
    return merge([base_layer()])


def vendor_layer(vendor: str, root: Path | None = None) -> Layer:
    """The vendor layer: a bundled vendors/<name>.yaml, or a file path (relative to `root`)."""
    if vendor.endswith((".yaml", ".yml")) or "/" in vendor:
        path = Path(vendor)
        if not path.is_absolute() and root is not None:
            path = root / path
        return read_layer(path)
    path = VENDORS_DIR / f"{vendor}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", vendor) or not path.is_file():
        known = sorted(p.stem for p in VENDORS_DIR.glob("*.yaml"))
        raise ProfileError(
            [f"vendor {vendor!r}: no such vendor profile (bundled: {', '.join(known) or 'none'}; or name a .yaml file)"]
        )
    return read_layer(path, f"fhir_profiles/mapping/vendors/{vendor}.yaml")


def source_profile(
    vendor: str | None,
    profile: str | dict | None,
    root: Path | None,
    label: str,
    legacy: dict | None = None,
    lines: dict | None = None,
) -> Profile:
    """The merged profile of one source.

    `profile` is the source's `profile:` config value: None, a file path (relative to
    `root`, the config file's folder), or a mapping written in the config (`label` names
    it in errors, `lines` gives its lines there). `legacy` holds the older per-source keys
    (patient_id_system, accession_system, issuer_systems) as a layer of their own on top; a
    key set both there and in the source's profile to different values is refused.
    """
    layers = [base_layer()]
    own = _own_layer(profile, root, label, lines)
    vendor = _vendor(vendor, own)
    if vendor:
        layers.append(vendor_layer(vendor, root))
    if own is not None:
        layers.append(own)
    if legacy:
        legacy_layer = check_layer(
            legacy, {}, shown_path(Path(label)) + " (issuer_systems, patient_id_system, accession_system)"
        )
        _refuse_conflicts(own, legacy_layer)
        layers.append(legacy_layer)
    return merge(layers)


def _own_layer(profile: object, root: Path | None, label: str, lines: dict | None) -> Layer | None:
    """The source's own layer, from the file or the mapping its `profile:` gives."""
    if isinstance(profile, str):
        path = Path(profile)
        return read_layer(path if path.is_absolute() or root is None else root / path)
    if isinstance(profile, dict):
        return check_layer(profile, lines or {}, shown_path(Path(label)))
    if profile is not None:
        raise ProfileError([f"{label}: must be a file name or a mapping of profile keys"])
    return None


def _vendor(vendor: str | None, own: Layer | None) -> str | None:
    """The source's vendor, given in its config or named by its own layer; both must agree."""
    named_vendor = own.data.get("vendor") if own else None
    if own is not None and vendor and named_vendor and vendor != named_vendor:
        raise ProfileError(
            [f"{own.where(('vendor',))}: vendor {named_vendor!r} differs from the source's vendor {vendor!r}"]
        )
    return vendor or named_vendor


def _refuse_conflicts(own: Layer | None, legacy: Layer) -> None:
    if own is None:
        return
    problems = []
    for section in ("patient_id", "accession"):
        mine, old = own.data.get(section, {}).get("system"), legacy.data.get(section, {}).get("system")
        if mine and old and mine != old:
            problems.append(
                f"{own.where((section, 'system'))}: {section}.system {mine!r} differs from "
                f"{section}_system {old!r} in the source's config; keep one"
            )
    for issuer, system in legacy.data.get("issuers", {}).items():
        mine = own.data.get("issuers", {}).get(issuer)
        if mine and mine != system:
            problems.append(
                f"{own.where(('issuers', issuer))}: issuer {issuer!r} maps to {mine!r} here and to "
                f"{system!r} in the source's issuer_systems; keep one"
            )
    if problems:
        raise ProfileError(problems)
