"""What a solver family provides: the contract every scheduler's ``init`` and ``step`` use.

A solver is a small frozen value holding the options of its update (as a diffrax solver is),
with a declared order. ``init`` calls :meth:`Solver.tables` once on the run's
:class:`~jaxsched.grids.levels.Grid` and :meth:`Solver.initial_history`; every ``step``
gathers one row of the tables and calls :meth:`Solver.update`. Nothing else is per family:
validation, ``begin_index``, ``add_noise``, the scan loops, inversion and the Flax samplers are
written once, in :mod:`jaxsched.schedulers.base` and :mod:`jaxsched.loops`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxsched.grids.levels import Grid, Level
from jaxsched.state import Thresholds


class Tables(Protocol):
    """A family's per-step tables: a NamedTuple of ``(N,)``-leading arrays. ``start`` is the
    level each step starts from (``add_noise`` at grid levels reads it)."""

    start: Level


class Solver(Protocol):
    """The update rule of a solver family.

    Attributes:
        order: the convergence order of the method (1 for DDIM, ``solver_order`` for
            DPM-Solver, ...), as stated and tested in ``tests/test_orders.py``.
        history: how many previous model outputs a step uses (0 for one-step solvers).
    """

    order: int
    history: int

    def tables(self, grid: Grid, begin_index: int) -> Tables:
        """Every step's tables from the grid, for a run that begins at ``begin_index``."""

    def initial_history(self, shape: tuple[int, ...], dtype) -> Any:
        """The memory a run starts with (zeros; ``()`` for one-step solvers)."""

    def thresholds(self, dtype) -> Thresholds:
        """The traced x0 limits of the run."""

    def stochastic(self, params: dict[str, Any]) -> bool:
        """Whether a step with these step parameters draws noise."""

    def update(
        self,
        row: Any,
        x: jax.Array,
        model_output: jax.Array,
        history: Any,
        noise: jax.Array | None,
        thresholds: Thresholds,
        params: dict[str, Any],
    ) -> tuple[jax.Array, jax.Array, Any]:
        """One step for one table row: ``(x_next, x0 prediction, new history)``."""


class Limits(NamedTuple):
    """The x0 limiter of a family (static) and its traced values' defaults.

    Attributes:
        clip_sample: clip x0 to ``[-clip_sample_range, clip_sample_range]``.
        thresholding: Imagen's dynamic thresholding (takes precedence over clipping).
        clip_sample_range, dynamic_thresholding_ratio, sample_max_value: the config's values
            of the traced :class:`~jaxsched.state.Thresholds`.
    """

    clip_sample: bool = False
    thresholding: bool = False
    clip_sample_range: float = 1.0
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    def thresholds(self, dtype) -> Thresholds:
        """The traced :class:`~jaxsched.state.Thresholds` of these values, in ``dtype``."""
        return Thresholds(
            clip_sample_range=jnp.asarray(self.clip_sample_range, dtype),
            dynamic_thresholding_ratio=jnp.asarray(self.dynamic_thresholding_ratio, dtype),
            sample_max_value=jnp.asarray(self.sample_max_value, dtype),
        )
