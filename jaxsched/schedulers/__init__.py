"""Scheduler classes, by diffusers class name."""

from jaxsched.schedulers.base import Scheduler
from jaxsched.schedulers.ddim import DDIMInverseScheduler, DDIMScheduler
from jaxsched.schedulers.deis import DEISMultistepInverseScheduler, DEISMultistepScheduler
from jaxsched.schedulers.dpmsolver import (
    DPMSolverMultistepInverseScheduler,
    DPMSolverMultistepScheduler,
)
from jaxsched.schedulers.flow_match import (
    FlowMatchEulerDiscreteScheduler,
    FlowMatchEulerInverseScheduler,
    FlowMatchHeunDiscreteScheduler,
)
from jaxsched.schedulers.unipc import UniPCMultistepInverseScheduler, UniPCMultistepScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.__name__: cls
    for cls in (
        DDIMScheduler,
        DDIMInverseScheduler,
        DEISMultistepScheduler,
        DEISMultistepInverseScheduler,
        DPMSolverMultistepScheduler,
        DPMSolverMultistepInverseScheduler,
        FlowMatchEulerDiscreteScheduler,
        FlowMatchEulerInverseScheduler,
        FlowMatchHeunDiscreteScheduler,
        UniPCMultistepScheduler,
        UniPCMultistepInverseScheduler,
    )
}

__all__ = [
    "SCHEDULERS",
    "DDIMInverseScheduler",
    "DDIMScheduler",
    "DEISMultistepInverseScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepInverseScheduler",
    "DPMSolverMultistepScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchEulerInverseScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "Scheduler",
    "UniPCMultistepInverseScheduler",
    "UniPCMultistepScheduler",
]
