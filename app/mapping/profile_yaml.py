"""YAML that remembers where each value was written.

A mapping profile is hand-written; an error in it must name the file and the line, and
the explain command names the line of the rule that produced an element. PyYAML's composer
keeps a mark (line, column) on every node, so the document is composed into nodes and
turned into plain Python values here, with a side table from each key path to its line.

    data, lines = load_marked(text, "vendors/ge.yaml")
    lines[("modality", "synonyms", "PET")]   # -> 7
"""

from __future__ import annotations

from typing import Any

import yaml

Path = tuple  # a key path: mapping keys (str) and sequence indexes (int)


class YamlProblem(Exception):
    """The text is not YAML we accept; `line` is 1-based (None when unknown)."""

    def __init__(self, reason: str, line: int | None):
        super().__init__(reason)
        self.reason = reason
        self.line = line


def load_marked(text: str, label: str = "<profile>") -> tuple[object, dict[Path, int]]:
    """(plain value of the document, {key path: 1-based line}); YamlProblem when broken.

    Duplicate keys are refused (PyYAML would silently keep the last one, so a rule written
    twice would lose the first without a word).
    """
    loader = yaml.SafeLoader(text)
    loader.name = label
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[Path, int] = {(): node.start_mark.line + 1}
        return _value(loader, node, (), lines), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise YamlProblem(f"not valid YAML: {reason}", mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise YamlProblem(f"not valid YAML: {exc}", None) from exc
    finally:
        loader.dispose()


def _value(loader: yaml.SafeLoader, node: yaml.Node, path: Path, lines: dict) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # merge keys (<<) as PyYAML does
        out: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem("a key must be a plain value, not a list or mapping", key_node.start_mark.line + 1)
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise YamlProblem(f"key {key!r} is written twice", key_node.start_mark.line + 1)
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _value(loader, value_node, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            items.append(_value(loader, item, path + (index,), lines))
        return items
    return loader.construct_object(node, deep=True)


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """Line of the longest prefix of `path` that was written in the file."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())
