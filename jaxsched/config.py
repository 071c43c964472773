"""diffusers configs in and out: dicts, ``scheduler_config.json`` files, class names."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxsched._checks import OptionTypeError
from jaxsched.schedulers import SCHEDULERS
from jaxsched.schedulers.base import CONFIG_NAME, Scheduler

OPTIONS_FILE = "diffusers_scheduler_options.json"
# Old diffusers configs of DDIMInverseScheduler call `set_alpha_to_one` by this name.
_RENAMED_KEYS = {"DDIMInverseScheduler": {"set_alpha_to_zero": "set_alpha_to_one"}}


def load_config(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A config dict from a mapping, a JSON file, or a directory holding
    ``scheduler_config.json``."""
    if isinstance(source, Mapping):
        config = dict(source)
        if "_class_name" not in config and hasattr(source, "scheduler_class"):
            config["_class_name"] = source.scheduler_class  # a sched.config
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
    if name is None:
        name = getattr(config, "scheduler_class", None)  # a SchedulerConfig (sched.config)
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


@functools.cache
def diffusers_scheduler_options() -> dict[str, frozenset[str]]:
    """The constructor options of every diffusers scheduler class (diffusers 0.42.1), from the
    table shipped with jaxsched (checked against diffusers by the tests)."""
    record = json.loads(Path(__file__).with_name(OPTIONS_FILE).read_text())
    return {name: frozenset(keys) for name, keys in record["schedulers"].items()}


def _is_flow_matching(config: Mapping[str, Any]) -> bool:
    """Whether a config describes a flow-matching model (rectified-flow levels, velocity)."""
    return (
        str(config.get("_class_name", "")).startswith("FlowMatch")
        or config.get("prediction_type") == "flow_prediction"
        or bool(config.get("use_flow_sigmas"))
    )


#: Keys only a variance-preserving (beta schedule) config has.
_VP_KEYS = ("beta_start", "beta_end", "beta_schedule", "trained_betas")


def _check_same_model(target: type[Scheduler], config: Mapping[str, Any], options: dict) -> None:
    """A flow-matching config cannot mean the same thing in a variance-preserving scheduler:
    the quiet result would sample another model. Raise unless the options ask for flow; and
    the other way round, a variance-preserving config (betas) into a flow-matching class."""
    if target.training_levels == "flow":
        if not _is_flow_matching(config) and any(key in config for key in _VP_KEYS):
            source = config.get("_class_name") or "this config"
            raise ValueError(
                f"{source} describes a variance-preserving model (betas), but "
                f"{target.__name__} would run it as a flow-matching one"
            )
        return
    if not _is_flow_matching(config):
        return
    flow_capable = any(f.name == "use_flow_sigmas" for f in dataclasses.fields(target))
    if flow_capable and (
        options.get("prediction_type") == "flow_prediction" or options.get("use_flow_sigmas")
    ):
        return
    source = config.get("_class_name") or "this config"
    hint = (
        " (pass use_flow_sigmas=True, prediction_type='flow_prediction' and flow_shift, e.g. "
        f"{target.__name__}.from_config(cfg, use_flow_sigmas=True, "
        "prediction_type='flow_prediction', flow_shift=3.0))"
        if flow_capable
        else ""
    )
    raise ValueError(
        f"{source} describes a flow-matching model (flow sigmas, velocity prediction), but "
        f"{target.__name__} would run it as a variance-preserving one{hint}"
    )


#: The flow shift's name in each kind of class: the flow-matching schedulers' and the multistep
#: solvers' (with ``use_flow_sigmas``).
_SHIFT_NAMES = ("shift", "flow_shift")


def _check_shift_carried(target: type[Scheduler], config: Mapping[str, Any], options: dict):
    """A flow model's shift under the other class kind's name would be dropped, and the
    sampler would quietly run at shift 1 (diffusers does): raise, naming the option to pass.
    A dynamically shifted config (Flux) carries ``use_dynamic_shifting`` instead."""
    names = {f.name for f in dataclasses.fields(target)}
    own = next((name for name in _SHIFT_NAMES if name in names), None)
    if own is None or own in options or config.get("use_dynamic_shifting"):
        return
    if own == "flow_shift" and not options.get("use_flow_sigmas"):
        return
    other = next(name for name in _SHIFT_NAMES if name != own)
    value = config.get(other, 1.0)
    if value is not None and value != 1.0:
        source = config.get("_class_name") or "this config"
        raise ValueError(
            f"{source} sets {other}={value}, which {target.__name__} calls {own}: pass "
            f"{own}={value} to keep the model's shift ({own}=1.0 to drop it, as diffusers does)"
        )


def from_config(
    config: Mapping[str, Any] | str | os.PathLike, cls: str | type[Scheduler] | None = None
) -> Scheduler:
    """Build a scheduler from a diffusers config (dict, JSON file or model directory).

    ``cls`` (a class or class name) converts between schedulers, as diffusers'
    ``OtherScheduler.from_config(old.config)`` does; by default the config's ``_class_name``
    (or the class of a ``sched.config``) is used. As in diffusers, keys that are options of
    another diffusers scheduler (a PNDM config's ``skip_prk_steps`` loaded into DDIM), or
    jaxsched extension options of another class, are dropped quietly; any other unknown key
    gives one warning that lists them. A flow-matching config (SD3, Flux, Wan) loaded into a
    scheduler that would run it as a variance-preserving model raises ``ValueError``, and so
    does a flow shift that the target class names otherwise (``shift`` / ``flow_shift``) and
    would quietly drop.
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
    options = {k: v for k, v in config.items() if k in names}
    _check_same_model(target, config, options)
    _check_shift_carried(target, config, options)
    extensions = (option for other in SCHEDULERS.values() for option in other.extension_options)
    elsewhere = frozenset().union(*diffusers_scheduler_options().values(), extensions)
    unknown = sorted(
        k for k in config if k not in names and not k.startswith("_") and k not in elsewhere
    )
    if unknown:
        warnings.warn(
            f"{target.__name__} does not know the config keys {unknown} (no diffusers or "
            "jaxsched scheduler has them); they are ignored",
            stacklevel=2,
        )
    return target(**options)
