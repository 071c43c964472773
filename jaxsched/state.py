"""The immutable per-run state every scheduler's ``init`` builds and ``step`` threads."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

import jax

if TYPE_CHECKING:  # the solvers import Thresholds from here
    from jaxsched.schedules import NoiseSchedule
    from jaxsched.solvers.base import Tables
    from jaxsched.solvers.multistep import History


class Thresholds(NamedTuple):
    """Traced scalars that bound the x0 prediction (so a sweep over them never recompiles).

    Attributes:
        clip_sample_range: ``x0`` is clipped to ``[-r, r]`` when ``clip_sample`` is on.
        dynamic_thresholding_ratio: quantile of ``|x0|`` used by dynamic thresholding.
        sample_max_value: upper bound of the dynamic threshold.
    """

    clip_sample_range: jax.Array
    dynamic_thresholding_ratio: jax.Array
    sample_max_value: jax.Array


@dataclasses.dataclass(frozen=True)
class Origin:
    """The scheduler that built a state: a static pytree node with no leaves, so it costs nothing
    under ``jit`` and ``vmap`` (it is part of the tree structure, like a jit cache key), and a
    ``step`` can refuse a state another scheduler built."""

    scheduler: Any

    def __repr__(self) -> str:
        return f"Origin({type(self.scheduler).__name__})"


jax.tree_util.register_static(Origin)


class SchedulerState(NamedTuple):
    """Everything one sampling (or inversion) run needs; a pytree of arrays.

    Attributes:
        timesteps: ``(N,)`` the timestep the model is called with at each step, in order
            (integers; continuous floats for a custom sigma grid, ``init(sigmas=...)``).
        step_index: ``()`` int32 position of the next step; ``step`` advances it by one.
        coefficients: the solver's per-step :class:`~jaxsched.solvers.base.Tables`, every leaf
            of leading size ``N`` (``DDIMTables``, ``MultistepTables``, ...).
        schedule: the training levels the grid was built from (a :class:`NoiseSchedule` for
            the variance-preserving families).
        thresholds: traced clipping / thresholding values.
        pred_original_sample: ``(*shape)`` the last x0 prediction (zeros before the first step).
        history: a multistep solver's :class:`~jaxsched.solvers.multistep.History` (``()``
            for one-step solvers).
        origin: the :class:`Origin` (scheduler) whose ``init`` built the state; static.
        begin_index: ``()`` int32, the step the run began at when ``init`` was given one
            (img2img, diffusers' ``set_begin_index``); ``None`` otherwise.
    """

    timesteps: jax.Array
    step_index: jax.Array
    coefficients: Tables
    schedule: NoiseSchedule
    thresholds: Thresholds
    pred_original_sample: jax.Array
    history: History | tuple[()] = ()
    origin: Origin | None = None
    begin_index: jax.Array | None = None

    @property
    def num_inference_steps(self) -> int:
        """``N``, the number of steps of the run (static)."""
        return self.timesteps.shape[-1]
