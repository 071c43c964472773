"""What every multistep exponential integrator shares (DPM-Solver, DPM-Solver++, DEIS).

Each of their updates, of any order, is linear in the sample ``x``, the current and past
converted model outputs ``m0, m1, m2`` and (for SDE variants) Gaussian noise ``z``:

    x_t = a x + b0 m0 + b1 m1 + b2 m2 + c z

so ``init`` folds the order used at each step into per-step weights, and a step is one fused
multiply-add. The families differ only in how they compute the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import NamedTuple

import jax
import jax.numpy as jnp


class StepWeights(NamedTuple):
    """``x_t = a x + b0 m0 + b1 m1 + b2 m2 + c z`` for one or many steps (arrays alike)."""

    a: jax.Array
    b0: jax.Array
    b1: jax.Array
    b2: jax.Array
    c: jax.Array


class MultistepCoefficients(NamedTuple):
    """Per-step tables of a multistep solver, each ``(N,)``, built at ``init``.

    Attributes:
        alpha, sigma: scales used to convert the model output at the level each step starts
            from (``x = alpha x0 + sigma eps``).
        weights: the update weights of the order used at that step.
        order: the order used at each step (int32), after warm-up and final-step rules.
    """

    alpha: jax.Array
    sigma: jax.Array
    weights: StepWeights
    order: jax.Array


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
    differentiation instead; their exact derivative is 0 for a zero final sigma (``a = 0``,
    ``b0 = 1``).
    """
    exact = weights_fn(nodes)
    if not any(isinstance(node, jax.core.Tracer) for node in nodes):
        return exact  # concrete nodes: nothing differentiates through them
    finite = reduce(jnp.logical_and, [jnp.isfinite(node) for node in nodes])
    smooth = weights_fn(tuple(jnp.where(finite, node, 0.0) for node in nodes))
    return jax.tree.map(lambda e, s: jnp.where(finite, s, jax.lax.stop_gradient(e)), exact, smooth)


def guarded_inverse(value: jax.Array, used: jax.Array) -> jax.Array:
    """``1 / value`` where ``used``, else 0; never divides by zero (so gradients stay finite)."""
    return jnp.where(used, 1.0 / jnp.where(used & (value != 0), value, 1.0), 0.0)


def multistep_update(
    x: jax.Array,
    m0: jax.Array,
    history: tuple[jax.Array, ...],
    weights: StepWeights,
    noise: jax.Array | None,
) -> jax.Array:
    """``a x + b0 m0 + b1 m1 + b2 m2 + c z`` for one step (scalar weights)."""
    out = weights.a * x + weights.b0 * m0
    for weight, m in zip((weights.b1, weights.b2), history, strict=False):
        out = out + weight * m
    if noise is not None:
        out = out + weights.c * noise
    return out
