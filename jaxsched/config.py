"""diffusers configs in and out: dicts, ``scheduler_config.json`` files, class names."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxsched._checks import OptionTypeError
from jaxsched.schedulers import SCHEDULERS
from jaxsched.schedulers.base import CONFIG_NAME, Scheduler

# Old diffusers configs of DDIMInverseScheduler call `set_alpha_to_one` by this name.
_RENAMED_KEYS = {"DDIMInverseScheduler": {"set_alpha_to_zero": "set_alpha_to_one"}}


def load_config(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A config dict from a mapping, a JSON file, or a directory holding
    ``scheduler_config.json``."""
    if isinstance(source, Mapping):
        config = dict(source)
        keys = [k for k in config if not isinstance(k, str)]
        if keys:
            raise OptionTypeError(f"config keys must be option names (str), got {keys[:4]}")
        return config
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"a scheduler config is a mapping, a JSON file or a directory, got {source!r}"
        )
    path = Path(source)
    if path.is_dir():
        path = path / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no scheduler config at {path}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return config


def _scheduler_class(cls: str | type[Scheduler] | None, config: Mapping[str, Any]):
    if isinstance(cls, type) and issubclass(cls, Scheduler):
        return cls
    name = cls if cls is not None else config.get("_class_name")
    if name is not None and not isinstance(name, str):
        source = "cls" if cls is not None else "_class_name"
        raise OptionTypeError(
            f"{source} must be a scheduler class or its name, got {name!r:.60}; available: "
            f"{sorted(SCHEDULERS)}"
        )
    if name is None:
        raise ValueError("the config has no _class_name; pass cls= to name the scheduler")
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler class {name!r}; available: {sorted(SCHEDULERS)}")
    return SCHEDULERS[name]


def from_config(
    config: Mapping[str, Any] | str | os.PathLike, cls: str | type[Scheduler] | None = None
) -> Scheduler:
    """Build a scheduler from a diffusers config (dict, JSON file or model directory).

    ``cls`` (a class or class name) converts between schedulers, as diffusers'
    ``OtherScheduler.from_config(old.config)`` does; by default the config's ``_class_name``
    is used. Keys the class does not use are ignored with one warning that lists them.
    """
    config = load_config(config)
    target = _scheduler_class(cls, config)
    for old, new in _RENAMED_KEYS.get(target.__name__, {}).items():
        if old in config:
            warnings.warn(
                f"config key {old!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=2
            )
            config[new] = config.pop(old)  # the old key wins, as in diffusers' __init__
    names = {f.name for f in dataclasses.fields(target)}
    unused = sorted(k for k in config if k not in names and not k.startswith("_"))
    if unused:
        warnings.warn(
            f"{target.__name__} does not use the config keys {unused}; they are ignored",
            stacklevel=2,
        )
    return target(**{k: v for k, v in config.items() if k in names})
