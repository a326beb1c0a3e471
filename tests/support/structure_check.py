"""Check a FHIR JSON resource against the differential of a StructureDefinition file.

Reads fhir_profiles/structure/*.json, so changing a profile changes what the tests demand.
It covers what our profiles use: min/max cardinality (per parent instance), fixed[x] and
pattern[x] values, Reference targetProfile (by the reference's type), value slicing on one
discriminator path (identifier by system, extension by url) with the slice's own
cardinality and the constraints on its children, and the value[x] of an extension slice.
Anything else in a differential is refused, so a profile cannot claim more than is checked.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

STRUCTURE_DIR = Path(__file__).resolve().parents[2] / "fhir_profiles" / "structure"
_CHECKED_KEYS = {"id", "path", "sliceName", "min", "max", "mustSupport", "slicing", "type", "short"}


@cache
def structure_definitions() -> dict[str, dict]:
    """url -> StructureDefinition, for every file in fhir_profiles/structure."""
    out = {}
    for path in sorted(STRUCTURE_DIR.glob("*.json")):
        sd = json.loads(path.read_text())
        out[sd["url"]] = sd
    return out


def _steps(element_id: str) -> list[tuple[str, str | None]]:
    """'Endpoint.extension:rat.value[x]' -> [('extension', 'rat'), ('value[x]', None)] (root dropped)."""
    out = []
    for part in element_id.split(".")[1:]:
        name, _, slice_name = part.partition(":")
        out.append((name, slice_name or None))
    return out


def _children(node, name: str) -> list:
    if not isinstance(node, dict):
        return []
    if name.endswith("[x]"):
        stem = name[:-3]
        values = [v for k, v in node.items() if k.startswith(stem) and k[len(stem) :][:1].isupper()]
    else:
        values = [node[name]] if name in node else []
    flat = []
    for value in values:
        flat.extend(value if isinstance(value, list) else [value])
    return flat


class Checker:
    def __init__(self, sd: dict):
        self.sd = sd
        self.elements = {e["id"]: e for e in sd["differential"]["element"]}
        for element in self.elements.values():
            unknown = set(element) - _CHECKED_KEYS - {k for k in element if k.startswith(("fixed", "pattern"))}
            if unknown:
                raise ValueError(
                    f"{sd['url']}: {element['id']} uses {sorted(unknown)}, which this checker does not check"
                )

    def _slice_matches(self, base_id: str, slice_id: str, item) -> bool:
        slicing = self.elements[base_id]["slicing"]
        for discriminator in slicing["discriminator"]:
            if discriminator["type"] != "value":
                raise ValueError(f"{base_id}: only value discriminators are checked")
            path = discriminator["path"]
            child = self.elements.get(f"{slice_id}.{path}", {})
            expected = next((v for k, v in child.items() if k.startswith(("fixed", "pattern"))), None)
            if expected is None and path == "url":
                expected = self.elements[slice_id]["type"][0]["profile"][0]
            if expected is None:
                raise ValueError(f"{slice_id}: no value for discriminator {path}")
            if _children(item, path) != [expected]:
                return False
        return True

    def _select(self, nodes: list, steps, prefix: str) -> list:
        """Nodes reached from `nodes` along `steps` (slices filter)."""
        for name, slice_name in steps:
            base_id = f"{prefix}.{name}"
            found = []
            for node in nodes:
                for child in _children(node, name):
                    if slice_name is None or self._slice_matches(base_id, f"{base_id}:{slice_name}", child):
                        found.append(child)
            nodes = found
            prefix = base_id + (f":{slice_name}" if slice_name else "")
        return nodes

    def problems(self, resource: dict) -> list[str]:
        root = self.sd["type"]
        out = []
        if resource.get("resourceType") != root:
            return [f"resourceType is {resource.get('resourceType')}, not {root}"]
        for element_id, element in self.elements.items():
            steps = _steps(element_id)
            if not steps:
                continue
            parents = self._select([resource], steps[:-1], root)
            for parent in parents:
                values = self._select(
                    [parent], steps[-1:], root + "".join(f".{n}" + (f":{s}" if s else "") for n, s in steps[:-1])
                )
                low = element.get("min")
                high = element.get("max")
                if low is not None and len(values) < low:
                    out.append(f"{element_id}: {len(values)} found, at least {low} required")
                if high not in (None, "*") and len(values) > int(high):
                    out.append(f"{element_id}: {len(values)} found, at most {high} allowed")
                for key, expected in element.items():
                    for value in values:
                        if key.startswith("fixed") and value != expected:
                            out.append(f"{element_id}: {value!r} is not the fixed value {expected!r}")
                        if key.startswith("pattern") and not _matches_pattern(value, expected):
                            out.append(f"{element_id}: {value!r} does not match the pattern {expected!r}")
                for kind in element.get("type", []):
                    targets = kind.get("targetProfile")
                    if kind["code"] == "Reference" and targets:
                        allowed = {t.rsplit("/", 1)[1] for t in targets}
                        for value in values:
                            reference = value.get("reference", "") if isinstance(value, dict) else ""
                            if reference.split("/", 1)[0] not in allowed:
                                out.append(f"{element_id}: reference {reference!r} is not to {sorted(allowed)}")
                    if kind["code"] == "boolean" and element_id.endswith("value[x]"):
                        for value in values:
                            if not isinstance(value, bool):
                                out.append(f"{element_id}: {value!r} is not a boolean")
        return out


def _matches_pattern(value, pattern) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_matches_pattern(value.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_matches_pattern(v, p) for v in value) for p in pattern)
    return value == pattern


def profile_problems(resource: dict) -> list[str]:
    """Problems of a resource against every profile in its meta.profile; one problem if it
    claims none of ours."""
    claimed = (resource.get("meta") or {}).get("profile") or []
    known = structure_definitions()
    ours = [url for url in claimed if url in known]
    if not ours:
        return [f"{resource.get('resourceType')}/{resource.get('id')} claims none of our profiles: {claimed}"]
    return [f"{url}: {problem}" for url in ours for problem in Checker(known[url]).problems(resource)]
