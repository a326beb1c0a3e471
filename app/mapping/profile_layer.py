"""One layer of a mapping profile (profile.py): a file or a config mapping, read and checked.

Each layer is checked on its own by the marshmallow schema of profile_schema.py, so that an
error names the file, the line and the key it is about, in words a profile author can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from marshmallow import ValidationError

from app.mapping.profile_schema import LayerSchema
from app.mapping.profile_yaml import YamlProblem, line_of, load_marked


class ProfileError(Exception):
    """A profile that cannot be used: every problem as `file:line: key: reason`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Layer:
    """One profile file (or config mapping) after its check."""

    label: str  # the file (or "config.yaml sources[0].profile")
    data: dict
    lines: dict  # key path -> line (empty for data not written in a file)

    def where(self, path: tuple) -> str:
        line = line_of(self.lines, path) if self.lines else None
        return f"{self.label}:{line}" if line else self.label


def check_layer(data: object, lines: dict, label: str) -> Layer:
    """A checked Layer, or ProfileError naming file, line, key and reason for each problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError([f"{label}:{lines.get((), 1)}: a profile is a mapping of keys, not {type(data).__name__}"])
    try:
        LayerSchema().load(data)
    except ValidationError as exc:
        problems = []
        for path, reason in _flatten(exc.messages):
            # marshmallow reports a bad dict entry under its key as {"key": …} / {"value": …}
            shown = path[:-1] if path and path[-1] in ("key", "value") and path[:-1] and path[:-1] in lines else path
            if reason == "Unknown field.":
                reason = "unknown key (see fhir_profiles/README.md for the keys a profile has)"
            line = line_of(lines, shown) if lines else None
            problems.append(
                f"{label}:{line}: {_path_text(shown)}: {reason}" if line else f"{label}: {_path_text(shown)}: {reason}"
            )
        raise ProfileError(problems) from exc
    return Layer(label, data, lines)


def read_layer(path: Path, label: str | None = None) -> Layer:
    label = label or shown_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError([f"{label}: cannot read the profile: {exc.strerror or exc}"]) from exc
    try:
        data, lines = load_marked(text, label)
    except YamlProblem as exc:
        raise ProfileError([f"{label}:{exc.line}: {exc.reason}" if exc.line else f"{label}: {exc.reason}"]) from exc
    return check_layer(data, lines, label)


def shown_path(path: Path) -> str:
    """A path as errors show it: relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _path_text(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(profile)"


def _flatten(messages: dict | list, path: tuple = ()) -> list[tuple[tuple, str]]:
    if isinstance(messages, list):
        return [(path, str(m)) for m in messages]
    out = []
    for key, value in messages.items():
        if key == "_schema":
            out += _flatten(value, path)
        else:
            out += _flatten(value, path + (key,))
    return out
