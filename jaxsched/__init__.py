"""jaxsched: functional JAX diffusion samplers with diffusers' options and numbers.

A scheduler is a frozen configuration; ``init`` builds an immutable :class:`SchedulerState`;
``step`` is pure, jittable and vmappable; :func:`sample` and :func:`invert` run whole loops
under one ``lax.scan``.
"""

import importlib
from typing import Any

from jaxsched import grids, sharding
from jaxsched.config import from_config, load_config
from jaxsched.debug import checked
from jaxsched.inversion import InversionInfo, exact_invert
from jaxsched.loops import Trajectory, begin_index_for_strength, invert, sample, tqdm_progress
from jaxsched.schedulers import (
    SCHEDULERS,
    DDIMInverseScheduler,
    DDIMScheduler,
    DEISMultistepInverseScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepInverseScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchEulerInverseScheduler,
    FlowMatchHeunDiscreteScheduler,
    Scheduler,
    UniPCMultistepInverseScheduler,
    UniPCMultistepScheduler,
)
from jaxsched.schedulers.base import Capabilities
from jaxsched.schedules import (
    FlowSchedule,
    NoiseSchedule,
    add_noise,
    calculate_shift,
    flow_schedule,
    get_velocity,
    noise_schedule,
)
from jaxsched.state import SchedulerState, Thresholds

__version__ = "0.1.0"

#: Parts with heavier dependencies (optax, flax) or test-only ones (scipy), imported on first
#: use so ``import jaxsched`` loads JAX and NumPy only.
_LAZY = ("analytic", "demo", "guidance", "learned_grid", "nn")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"jaxsched.{name}")
    raise AttributeError(f"module 'jaxsched' has no attribute {name!r}")


__all__ = [
    "SCHEDULERS",
    "Capabilities",
    "DDIMInverseScheduler",
    "DDIMScheduler",
    "DEISMultistepInverseScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepInverseScheduler",
    "DPMSolverMultistepScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchEulerInverseScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "FlowSchedule",
    "InversionInfo",
    "NoiseSchedule",
    "Scheduler",
    "SchedulerState",
    "Thresholds",
    "Trajectory",
    "UniPCMultistepInverseScheduler",
    "UniPCMultistepScheduler",
    "__version__",
    "add_noise",
    "begin_index_for_strength",
    "calculate_shift",
    "checked",
    "exact_invert",
    "flow_schedule",
    "from_config",
    "get_velocity",
    "grids",
    "invert",
    "learned_grid",
    "load_config",
    "noise_schedule",
    "sample",
    "sharding",
    "tqdm_progress",
]
