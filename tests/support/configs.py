"""Config files written by a test and loaded as the server loads them: the config, or the
problems `ConfigError` names, key by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Config, ConfigError, load_config


def load_text(tmp_path: Path, text: str, environ: dict | None = None) -> Config:
    """The config of `text`, written to tmp_path/config.yaml (relative paths resolve there)."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path, environ=environ or {})


def config_problems(tmp_path: Path, text: str, environ: dict | None = None) -> dict:
    """What ConfigError names for `text`: {key path: [problem, ...]}; fails if it loads."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, environ)
    return info.value.problems
