"""The settings of a `type: folder` source: its config keys, checked, and how it is opened.

Apart from the source itself (app/sources/folder.py) because every process loads the config,
API nodes included, and only a sync reads the files: pydicom's file reader is imported when
a source is opened, not when its settings are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, ValidationError, fields, validates_schema

from app.sources.base import ProtocolSettings

if TYPE_CHECKING:
    from app.mapping.profile import Profile
    from app.sources.folder import FolderSource


class FolderSchema(Schema):
    """The config keys of a `type: folder` source (app/sources/settings.py joins them)."""

    path = fields.String(load_default=None)

    @validates_schema(skip_on_field_errors=False)
    def _folder_keys(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("type") != "folder":
            return
        problems: dict[str, list[str]] = {}
        if not data.get("path"):
            raise ValidationError("a folder source needs a path", "path")
        if data.get("max_results") is not None:
            problems["max_results"] = ["max_results is for dicomweb and dimse sources (a folder has no limit)"]
        if data.get("concurrency") is not None:
            problems["concurrency"] = ["concurrency is for dicomweb and dimse sources (a folder is read file by file)"]
        if data.get("on_demand"):
            problems["on_demand"] = ["on-demand fetching needs an archive that answers queries (dicomweb or dimse)"]
        if problems:
            raise ValidationError(problems)


@dataclass(frozen=True)
class FolderSettings(ProtocolSettings):
    #: the folder, resolved against the config file's directory
    path: Path

    def open(self, name: str, profile: Profile | None) -> FolderSource:
        from app.sources.folder import FolderSource

        return FolderSource(
            name,
            self.path,
            profile.private_tag_numbers() if profile else (),
            default_charset=profile.default_character_set if profile else None,
        )

    def where(self) -> str:
        return str(self.path)
