"""The linear multistep core every multistep family is fed through (DPM-Solver, DPM-Solver++,
DEIS; the shape UniPC's predictor-corrector and Heun's two stages also fit).

An update of any order is linear in the current and previous samples ``S_j``, the current and
previous converted model outputs ``M_k`` and Gaussian noise ``z``:

    x_next = sum_j a_j S_j + sum_k b_k M_k + c z,

so ``init`` folds the order used at each step (warm-up, final-step rules) into per-step
weights, and a step is one fused multiply-add (as blackjax feeds one integrator core with
coefficient lists). A family differs only in how it computes the weights and what it converts
the model output into.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import reduce
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.grids.levels import Grid, Level
from jaxsched.solvers.base import Limits
from jaxsched.solvers.prediction import data_and_noise, dynamic_threshold, noise_from_data
from jaxsched.state import Thresholds

# Below this many steps, lower_order_final also lowers the last two steps (diffusers).
LOWER_ORDER_FINAL_BELOW = 15


class StepWeights(NamedTuple):
    """``x_next = sum_j samples[j] S_j + sum_k outputs[k] M_k + noise z`` for one or many steps.

    Attributes:
        samples: ``(..., P)`` weights of the current sample (``j = 0``) and of the ``P - 1``
            previous ones the family keeps.
        outputs: ``(..., K)`` weights of the current converted output (``k = 0``) and of the
            ``K - 1`` previous ones, newest first.
        noise: ``(...)`` the weight of the standard normal noise (0 for ODE solvers).
    """

    samples: jax.Array
    outputs: jax.Array
    noise: jax.Array


class History(NamedTuple):
    """What a multistep run remembers between steps, newest first.

    Attributes:
        outputs: the previous converted model outputs (``K - 1`` arrays shaped like ``x``).
        samples: the previous samples (``P - 1``; none for DPM-Solver and DEIS).
    """

    outputs: tuple[jax.Array, ...] = ()
    samples: tuple[jax.Array, ...] = ()


class MultistepTables(NamedTuple):
    """Per-step tables of a multistep family, each ``(N,)`` leading, built at ``init``.

    Attributes:
        start: the level each step starts from.
        convert_alpha, convert_sigma: the scales that convert the model output at that level
            (``x = alpha x0 + sigma eps``; diffusers' flow-prediction quirk may differ from
            ``start``).
        weights: the update weights of the order used at that step.
        order: the order used at each step (int32), after warm-up and final-step rules.
    """

    start: Level
    convert_alpha: jax.Array
    convert_sigma: jax.Array
    weights: StepWeights
    order: jax.Array


def step_orders(
    solver_order: int,
    num_steps: int,
    *,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigmas_type: str,
    begin_index: int = 0,
) -> np.ndarray:
    """The order diffusers uses at each step, ``(N,)``: warm-up from the step the run begins at
    (step ``i`` has at most ``i - begin_index + 1``; steps before it never run), then
    ``euler_at_final`` / ``lower_order_final`` / a zero final sigma lower the last step to 1,
    and ``lower_order_final`` below 15 steps the second-to-last to 2 (both counted over all
    ``N`` steps, as diffusers counts them)."""
    short = lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW
    orders = np.clip(np.arange(num_steps) - begin_index + 1, 1, solver_order)
    if num_steps >= 2 and short:
        orders[-2] = min(orders[-2], 2)
    if euler_at_final or short or final_sigmas_type == "zero":
        orders[-1] = 1
    return orders.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class OrderRules:
    """diffusers' per-step order rules of a multistep family (static options)."""

    solver_order: int
    lower_order_final: bool
    euler_at_final: bool = False
    final_sigmas_type: str = "sigma_min"

    def nominal(self, num_steps: int, begin_index: int) -> np.ndarray:
        """The order of each step before history checks, ``(N,)``."""
        return step_orders(
            self.solver_order,
            num_steps,
            lower_order_final=self.lower_order_final,
            euler_at_final=self.euler_at_final,
            final_sigmas_type=self.final_sigmas_type,
            begin_index=begin_index,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultistepSolver:
    """What every multistep solver value shares: its order rules, x0 limits and prediction
    type, a declared order of ``solver_order`` and a history of ``solver_order - 1`` previous
    converted outputs. A family subclasses it with its ``tables`` and ``update``."""

    prediction_type: str
    rules: OrderRules
    limits: Limits

    @property
    def order(self) -> int:
        return self.rules.solver_order

    @property
    def history(self) -> int:
        return self.rules.solver_order - 1

    def step_orders(self, grid: Grid, begin_index: int, nodes: tuple[jax.Array, ...]):
        """``(N,)`` the order each step uses: the rules' table, lowered where history points
        coincide or lie at infinity (:func:`effective_order`)."""
        nominal = jnp.asarray(self.rules.nominal(grid.timesteps.shape[0], begin_index))
        return effective_order(nominal, nodes)

    def initial_history(self, shape: tuple[int, ...], dtype) -> History:
        return History(outputs=tuple(jnp.zeros(shape, dtype) for _ in range(self.history)))

    def thresholds(self, dtype) -> Thresholds:
        return self.limits.thresholds(dtype)

    def stochastic(self, params: dict[str, Any]) -> bool:
        return False


def chain_coordinate(grid: Grid, of_level: Callable[[Level], jax.Array]) -> jax.Array:
    """``(N + 1,)`` values of a coordinate (lambda, log rho) along a chained grid."""
    return jnp.concatenate([of_level(grid.start), of_level(grid.end)[-1:]])


def history_nodes(coordinate: jax.Array) -> tuple[jax.Array, ...]:
    """``(t, s0, s1, s2)``, each ``(N,)``, from the ``(N + 1,)`` coordinate of a chained grid
    (lambda, or log rho): where each step ends, starts, and started one and two steps before
    (before the first step the history repeats ``s0``)."""
    n = coordinate.shape[0] - 1
    s0 = coordinate[:n]
    s1 = jnp.concatenate([s0[:1], s0[:-1]])
    s2 = jnp.concatenate([s1[:1], s1[:-1]])
    return coordinate[1:], s0, s1, s2


def effective_order(nominal: jax.Array, nodes: tuple[jax.Array, ...]) -> jax.Array:
    """Lower the order where history points coincide or lie at infinity.

    ``nodes`` are the grid coordinates (lambda or log-rho) of ``(t, s0, s1, s2)``. A divided
    difference over a zero interval is undefined, and a node at infinity (a zero sigma) carries
    no slope information, so ``s1`` equal to ``s0`` or infinite -> order 1, and ``s2`` equal to
    ``s1`` or infinite -> at most order 2 (the limit of the higher-order weights).
    """
    _, s0, s1, s2 = nodes
    order = jnp.where((s0 == s1) | ~jnp.isfinite(s1), jnp.minimum(nominal, 1), nominal)
    return jnp.where((s1 == s2) | ~jnp.isfinite(s2), jnp.minimum(order, 2), order)


def differentiable_where_finite(
    weights_fn: Callable[[tuple[jax.Array, ...]], StepWeights], nodes: tuple[jax.Array, ...]
) -> StepWeights:
    """``weights_fn(nodes)``, with gradients through the steps whose nodes are all finite.

    A node at infinity (a zero sigma: the data end of a grid) gives the right weights in IEEE
    arithmetic, but their derivatives meet ``0 * inf``. Those steps are constants for
    differentiation instead; their exact derivative is 0 for a zero final sigma.
    """
    exact = weights_fn(nodes)
    if not any(isinstance(node, jax.core.Tracer) for node in nodes):
        return exact  # concrete nodes: nothing differentiates through them
    finite = reduce(jnp.logical_and, [jnp.isfinite(node) for node in nodes])
    smooth = weights_fn(tuple(jnp.where(finite, node, 0.0) for node in nodes))

    def choose(e, s):
        mask = finite.reshape(finite.shape + (1,) * (e.ndim - finite.ndim))
        return jnp.where(mask, s, jax.lax.stop_gradient(e))

    return jax.tree.map(choose, exact, smooth)


def guarded_inverse(value: jax.Array, used: jax.Array) -> jax.Array:
    """``1 / value`` where ``used``, else 0; never divides by zero (so gradients stay finite)."""
    return jnp.where(used, 1.0 / jnp.where(used & (value != 0), value, 1.0), 0.0)


def stack_weights(sample, outputs: tuple[jax.Array, ...], noise, num_outputs: int) -> StepWeights:
    """:class:`StepWeights` of one sample weight and the first ``num_outputs`` output weights."""
    return StepWeights(
        samples=sample[..., None],
        outputs=jnp.stack(outputs[:num_outputs], axis=-1),
        noise=noise,
    )


def linear_update(
    weights: StepWeights,
    samples: tuple[jax.Array, ...],
    outputs: tuple[jax.Array, ...],
    noise: jax.Array | None,
) -> jax.Array:
    """``sum_j a_j S_j + sum_k b_k M_k + c z`` for one step (weights of one row)."""
    out = sum(weights.samples[j] * s for j, s in enumerate(samples))
    for k, m in enumerate(outputs):
        out = out + weights.outputs[k] * m
    if noise is not None:
        out = out + weights.noise * noise
    return out


def push(history: History, output: jax.Array, sample: jax.Array) -> History:
    """The history after a step: the new output (and sample) first, the oldest dropped."""
    return History(
        outputs=(output, *history.outputs)[: len(history.outputs)],
        samples=(sample, *history.samples)[: len(history.samples)],
    )


def convert_prediction(
    prediction_type: str,
    model_output: jax.Array,
    x: jax.Array,
    alpha,
    sigma,
    thresholds: Thresholds,
    *,
    thresholding: bool,
) -> tuple[jax.Array, jax.Array]:
    """``(x0, eps)`` at the level ``(alpha, sigma)`` after dynamic thresholding (``eps`` then
    follows from the limited ``x0``)."""
    x0, eps = data_and_noise(prediction_type, model_output, x, alpha, sigma)
    if thresholding:
        x0 = dynamic_threshold(
            x0, thresholds.dynamic_thresholding_ratio, thresholds.sample_max_value
        )
        eps = noise_from_data(x, x0, alpha, sigma)
    return x0, eps
