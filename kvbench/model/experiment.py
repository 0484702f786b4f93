"""Experiment files and the command line's settings, overlaid on the defaults and checked: a BenchConfig."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from kvbench.core.errors import KvbenchError
from kvbench.core.untrusted import read_bounded_text
from kvbench.model.settings import MOST_CONFIG_BYTES, BenchConfig, coerce, config_fields
from kvbench.model.validation import validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


def apply_settings(config: BenchConfig, settings: dict[str, Any], source: str) -> BenchConfig:
    """Overlay settings (from a TOML file or the command line) on a config, checking names and types."""
    known = config_fields()
    for key, value in settings.items():
        if key not in known:
            raise KvbenchError(f"{source}: unknown setting '{key}'; known settings are {', '.join(sorted(known))}")
        if value is None:
            continue
        setattr(config, key, coerce(key, value, source))
    return config


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read an experiment file; the keys are the long names of `kvbench run`'s options."""
    path = Path(path).expanduser()
    text = read_bounded_text(path, MOST_CONFIG_BYTES, "config file")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise KvbenchError(f"{path}: not valid TOML ({error}); fix the syntax") from None
    # Users write option names as on the command line; accept both spellings, but not both at once:
    # which one would win is not obvious to a reader of the file.
    settings: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name in settings:
            raise KvbenchError(f"{path}: '{spelled[name]}' and '{key}' set the same setting; keep one")
        settings[name], spelled[name] = value, key
    return settings


def build_config(config_file: str | Path | None, overrides: dict[str, Any]) -> BenchConfig:
    """Defaults, then the TOML file, then command-line overrides; validated."""
    config = BenchConfig()
    if config_file is not None:
        apply_settings(config, load_toml(config_file), str(config_file))
    apply_settings(config, overrides, "command line")
    validate(config, str(config_file) if config_file else "command line")
    return config


def rerun_command(config_file: str | Path | None, overrides: dict[str, Any], resume: bool) -> str:
    """The settings given on the command line (`overrides`, over `config_file`), as one `kvbench run` command
    that reruns the same benchmark, with --resume where asked: recorded in the results file, and offered
    to continue an interrupted run."""
    words = ["kvbench", "run"]
    if config_file is not None:
        words += ["--config", str(config_file)]
    for key, value in overrides.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else flag.replace("--", "--no-", 1))
        elif config_fields()[key].metadata["comma_separated"]:
            words += [flag, ",".join(value)]
        elif isinstance(value, list):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    if resume:
        words.append("--resume")
    return shlex.join(words)
