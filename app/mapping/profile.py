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

Each layer is checked on its own by a marshmallow schema (profile_schema.py), so an error
names the file and the line it is on. The merged result is a frozen `Profile`: plain data the mapping reads
without any I/O, which also remembers the file and line of every rule (`rule(...)`) so the
explain command can cite them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from marshmallow import ValidationError

from app.mapping.profile_schema import EXTENSION_BASE, PRIVATE_TARGETS, LayerSchema, snomed_meanings
from app.mapping.profile_yaml import YamlProblem, line_of, load_marked

#: the bundled profiles: fhir_profiles/mapping next to the app package
PROFILES_DIR = Path(__file__).resolve().parents[2] / "fhir_profiles" / "mapping"
BASE_FILE = PROFILES_DIR / "base.yaml"
VENDORS_DIR = PROFILES_DIR / "vendors"


class ProfileError(Exception):
    """A profile that cannot be used: every problem as `file:line: key: reason`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# --- one layer: read, check ------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One profile file (or config mapping) after its check."""

    label: str  # the file (or "config.yaml sources[0].profile")
    data: dict
    lines: dict  # key path -> line (empty for data not written in a file)

    def where(self, path: tuple) -> str:
        line = line_of(self.lines, path) if self.lines else None
        return f"{self.label}:{line}" if line else self.label


def _path_text(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(profile)"


def _flatten(messages, path=()) -> list[tuple[tuple, str]]:
    if isinstance(messages, list):
        return [(path, str(m)) for m in messages]
    out = []
    for key, value in messages.items():
        if key == "_schema":
            out += _flatten(value, path)
        else:
            out += _flatten(value, path + (key,))
    return out


def check_layer(data, lines: dict, label: str) -> Layer:
    """A checked Layer, or ProfileError naming file, line, key and reason for each problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError([f"{label}:{lines.get((), 1)}: a profile is a mapping of keys, not "
                            f"{type(data).__name__}"])
    try:
        LayerSchema().load(data)
    except ValidationError as exc:
        problems = []
        for path, reason in _flatten(exc.messages):
            # marshmallow reports a bad dict entry under its key as {"key": …} / {"value": …}
            shown = path[:-1] if path and path[-1] in ("key", "value") and path[:-1] and \
                path[:-1] in lines else path
            if reason == "Unknown field.":
                reason = "unknown key (see fhir_profiles/README.md for the keys a profile has)"
            line = line_of(lines, shown) if lines else None
            problems.append(f"{label}:{line}: {_path_text(shown)}: {reason}" if line
                            else f"{label}: {_path_text(shown)}: {reason}")
        raise ProfileError(problems) from exc
    return Layer(label, data, lines)


def read_layer(path: Path, label: str | None = None) -> Layer:
    label = label or _shown_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError([f"{label}: cannot read the profile: {exc.strerror or exc}"]) from exc
    try:
        data, lines = load_marked(text, label)
    except YamlProblem as exc:
        raise ProfileError([f"{label}:{exc.line}: {exc.reason}" if exc.line else f"{label}: {exc.reason}"]) from exc
    return check_layer(data, lines, label)


def _shown_path(path: Path) -> str:
    """A path as errors show it: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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

    def rule(self, *path) -> str | None:
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
    return [(code.value, code.meaning) for code in (getattr(cid, name) for name in cid.dir())
            if code.scheme_designator == "SCT"]


@cache
def _cid4031_meanings() -> dict:
    """Each CID 4031 concept under its meaning in capitals: "CHEST" -> (code, meaning)."""
    return {body_part_key(meaning): (code, meaning) for code, meaning in _cid4031()}


def body_part_meaning(code: str) -> str:
    """The display of a SNOMED CT body part code: its CID 4031 meaning, else PS3.16's."""
    return dict(_cid4031()).get(code) or snomed_meanings()[code]


def merge(layers: list[Layer]) -> Profile:
    """One Profile from layers, earliest first (see the module doc for the rule)."""
    values: dict[tuple, object] = {}
    rules: dict[tuple, str] = {}
    private: dict[tuple, PrivateTag] = {}

    def walk(node, path, layer):
        for key, value in node.items():
            here = path + (key,)
            if isinstance(value, dict):
                if not value:
                    rules.setdefault(here, layer.where(here))
                walk(value, here, layer)
            else:
                values[here] = value
                rules[here] = layer.where(here)

    for layer in layers:
        data = dict(layer.data)
        tags = data.pop("private_tags", None) or []
        data.pop("vendor", None)
        data.pop("description", None)
        walk(data, (), layer)
        for index, item in enumerate(tags):
            group, element = int(item["group"], 16), int(item["element"], 16)
            target = item.get("target")
            level = PRIVATE_TARGETS[target] if target else item.get("level", "study")
            private[(item["creator"], group, element)] = PrivateTag(
                creator=item["creator"], group=group, element=element, level=level, target=target,
                extension=EXTENSION_BASE + item["extension"] if item.get("extension") else None,
                rule=layer.where(("private_tags", index)))

    def table(prefix: tuple) -> dict:
        return {path[len(prefix)]: value for path, value in values.items()
                if len(path) == len(prefix) + 1 and path[:len(prefix)] == prefix and value is not None}

    def one(*path, default=None):
        value = values.get(path)
        return default if value is None else value

    body_parts: dict = {}
    if one("body_part", "cid4031_meanings", default=True):
        body_parts.update(_cid4031_meanings())
    for term, code in table(("body_part", "terms")).items():
        body_parts[body_part_key(term)] = (code, body_part_meaning(code))
    for term, code in table(("body_part", "terms")).items():
        rules[("body_part", "term", body_part_key(term))] = rules[("body_part", "terms", term)]
    synonyms = {}
    for value, code in table(("modality", "synonyms")).items():
        synonyms[value.upper()] = code
        rules[("modality", "synonym", value.upper())] = rules[("modality", "synonyms", value)]
    names = {}
    for variant, name in table(("institution", "names")).items():
        names[institution_key(variant)] = name
        rules[("institution", "name", institution_key(variant))] = rules[("institution", "names", variant)]
    return Profile(
        layers=tuple(layer.label for layer in layers),
        patient_id_system=one("patient_id", "system"),
        accession_system=one("accession", "system"),
        issuers=table(("issuers",)),
        modality_synonyms=synonyms,
        body_parts=body_parts,
        institution_location=one("institution", "location", default=True),
        institution_names=names,
        institution_default=one("institution", "default"),
        name_format=one("names", "format", default="dicom"),
        date_formats=tuple(one("dates", "formats", default=())),
        default_character_set=one("character_set", "default"),
        requires_access_token=one("endpoint", "requires_access_token", default=False),
        private_tags=tuple(private.values()),
        rules=rules,
    )


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
        raise ProfileError([f"vendor {vendor!r}: no such vendor profile (bundled: {', '.join(known) or 'none'}; "
                            "or name a .yaml file)"])
    return read_layer(path, f"fhir_profiles/mapping/vendors/{vendor}.yaml")


def source_profile(vendor: str | None, profile, root: Path | None, label: str,
                   legacy: dict | None = None, lines: dict | None = None) -> Profile:
    """The merged profile of one source.

    `profile` is the source's `profile:` config value: None, a file path (relative to
    `root`, the config file's folder), or a mapping written in the config (`label` names
    it in errors, `lines` gives its lines there). `legacy` holds the older per-source keys
    (patient_id_system, accession_system, issuer_systems) as a layer of their own on top; a
    key set both there and in the source's profile to different values is refused.
    """
    layers = [base_layer()]
    own: Layer | None = None
    if isinstance(profile, str):
        path = Path(profile)
        own = read_layer(path if path.is_absolute() or root is None else root / path)
    elif isinstance(profile, dict):
        own = check_layer(profile, lines or {}, _shown_path(Path(label)))
    elif profile is not None:
        raise ProfileError([f"{label}: must be a file name or a mapping of profile keys"])
    named_vendor = own.data.get("vendor") if own else None
    if vendor and named_vendor and vendor != named_vendor:
        raise ProfileError([f"{own.where(('vendor',))}: vendor {named_vendor!r} differs from the source's "
                            f"vendor {vendor!r}"])
    vendor = vendor or named_vendor
    if vendor:
        layers.append(vendor_layer(vendor, root))
    if own is not None:
        layers.append(own)
    if legacy:
        legacy_layer = check_layer(legacy, {}, _shown_path(Path(label)) + " (issuer_systems, patient_id_system, "
                                   "accession_system)")
        _refuse_conflicts(own, legacy_layer)
        layers.append(legacy_layer)
    return merge(layers)


def _refuse_conflicts(own: Layer | None, legacy: Layer) -> None:
    if own is None:
        return
    problems = []
    for section in ("patient_id", "accession"):
        mine, old = own.data.get(section, {}).get("system"), legacy.data.get(section, {}).get("system")
        if mine and old and mine != old:
            problems.append(f"{own.where((section, 'system'))}: {section}.system {mine!r} differs from "
                            f"{section}_system {old!r} in the source's config; keep one")
    for issuer, system in legacy.data.get("issuers", {}).items():
        mine = own.data.get("issuers", {}).get(issuer)
        if mine and mine != system:
            problems.append(f"{own.where(('issuers', issuer))}: issuer {issuer!r} maps to {mine!r} here and to "
                            f"{system!r} in the source's issuer_systems; keep one")
    if problems:
        raise ProfileError(problems)
