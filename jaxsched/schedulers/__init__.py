"""Scheduler classes, by diffusers class name."""

from jaxsched.schedulers.base import Scheduler
from jaxsched.schedulers.ddim import DDIMInverseScheduler, DDIMScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.__name__: cls for cls in (DDIMScheduler, DDIMInverseScheduler)
}

__all__ = ["SCHEDULERS", "DDIMInverseScheduler", "DDIMScheduler", "Scheduler"]
