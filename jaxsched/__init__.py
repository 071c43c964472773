"""jaxsched: functional JAX diffusion samplers with diffusers' options and numbers.

A scheduler is a frozen configuration; ``init`` builds an immutable :class:`SchedulerState`;
``step`` is pure, jittable and vmappable; :func:`sample` and :func:`invert` run whole loops
under one ``lax.scan``.
"""

from jaxsched import learned_grid, sharding
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
    Scheduler,
)
from jaxsched.schedules import NoiseSchedule, add_noise, get_velocity, noise_schedule
from jaxsched.state import SchedulerState, Thresholds

__version__ = "0.1.0"

__all__ = [
    "SCHEDULERS",
    "DDIMInverseScheduler",
    "DDIMScheduler",
    "DEISMultistepInverseScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepInverseScheduler",
    "DPMSolverMultistepScheduler",
    "InversionInfo",
    "NoiseSchedule",
    "Scheduler",
    "SchedulerState",
    "Thresholds",
    "Trajectory",
    "__version__",
    "add_noise",
    "begin_index_for_strength",
    "checked",
    "exact_invert",
    "from_config",
    "get_velocity",
    "invert",
    "learned_grid",
    "load_config",
    "noise_schedule",
    "sample",
    "sharding",
    "tqdm_progress",
]
