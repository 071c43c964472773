"""DEIS: the multistep exponential integrator in log-rho (Zhang & Chen 2023, "Fast Sampling of
Diffusion Models with Exponential Integrator", sec. 4, "tAB-DEIS" with the ``rho`` time scale).

With ``rho = sigma / alpha`` the probability-flow ODE is ``d(x / alpha) = eps d rho``. DEIS
extrapolates ``eps`` by the Lagrange polynomial through the last ``k`` outputs in
``ell = log rho`` and integrates it exactly. From ``s0`` to ``t``, with ``u = ell - ell_s0``:

    x_t = alpha_t (x / alpha_s0 + sum_j C_j m_j),   C_j = rho_s0 int_0^h L_j(u) e^u du

where ``h = ell_t - ell_s0`` and ``L_j`` is the Lagrange basis polynomial of node ``j`` at
``u_j = ell_sj - ell_s0`` (so ``u_0 = 0``). Writing ``I_k(h) = int_0^h u^k e^u du``:

- ``sum_j C_j = rho_s0 I_0(h) = rho_t - rho_s0``, so ``C_0 = (rho_t - rho_s0) - C_1 - C_2``;
- order 2: ``C_1 = rho_s0 I_1 / d1``;
- order 3: ``C_1 = rho_s0 (I_2 - d2 I_1) / (d1 (d1 - d2))``,
  ``C_2 = rho_s0 (I_2 - d1 I_1) / (d2 (d2 - d1))``;

with ``d1 = u_1, d2 = u_2``. diffusers evaluates each ``C_j`` as the difference of two values
of an antiderivative that grow like ``1 / h^(k-1)``; in float32 that difference cancels, and
its third order diverges as steps shrink. The form above has no such difference: ``I_1, I_2``
come from their Taylor series for small ``|h|`` and from closed forms otherwise, and the first
order term is the exact ``rho_t - rho_s0``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxsched.grids.levels import Grid, Level
from jaxsched.solvers.multistep import (
    MultistepSolver,
    MultistepTables,
    StepWeights,
    chain_coordinate,
    convert_prediction,
    differentiable_where_finite,
    guarded_inverse,
    history_nodes,
    linear_update,
    push,
    stack_weights,
)
from jaxsched.solvers.prediction import FLOW_PREDICTION, noise_from_data
from jaxsched.solvers.safe_math import log_or_minus_inf

ALGORITHM_TYPES = ("deis",)
SOLVER_TYPES = ("logrho",)
# diffusers accepts DPM-Solver / UniPC names for these and runs DEIS; so does jaxsched.
ALGORITHM_ALIASES = ("dpmsolver", "dpmsolver++")
SOLVER_ALIASES = ("midpoint", "heun", "bh1", "bh2")

# |h| below which I_1, I_2 come from their Taylor series; 20 terms reach float64 precision.
SERIES_RADIUS = 1.0
SERIES_TERMS = 20


def exponential_moments(h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(I_1(h), I_2(h))`` with ``I_k(h) = int_0^h u^k e^u du``, elementwise, to full relative
    precision for every ``h`` (``+inf`` gives ``inf``).

    Small ``|h|``: ``I_k = h^(k+1) sum_n h^n / (n! (n + k + 1))``. Otherwise the closed forms
    ``I_1 = (h - 1) e^h + 1`` and ``I_2 = (h^2 - 2 h + 2) e^h - 2``, whose limits at
    ``h = -inf`` (a step to ``rho = 0``) are ``1`` and ``-2``.
    """
    small = jnp.abs(h) <= SERIES_RADIUS
    near = jnp.where(small, h, 0.0)
    term = jnp.ones_like(near)
    sum1 = jnp.zeros_like(near)
    sum2 = jnp.zeros_like(near)
    for n in range(SERIES_TERMS):
        sum1 = sum1 + term / (n + 2)
        sum2 = sum2 + term / (n + 3)
        term = term * near / (n + 1)
    series1, series2 = near**2 * sum1, near**3 * sum2
    finite_far = ~small & jnp.isfinite(h)
    far = jnp.where(finite_far, h, 2.0)
    e = jnp.exp(far)
    # Limits: h = -inf -> (1, -2); h = +inf -> (inf, inf); NaN stays NaN.
    limit = jnp.where(h == -jnp.inf, 0.0, jnp.where(h == jnp.inf, jnp.inf, jnp.nan))
    closed1 = jnp.where(finite_far, (far - 1.0) * e + 1.0, limit + 1.0)
    closed2 = jnp.where(finite_far, (far * (far - 2.0) + 2.0) * e - 2.0, limit - 2.0)
    return jnp.where(small, series1, closed1), jnp.where(small, series2, closed2)


def deis_step_weights(
    alphas: tuple[jax.Array, jax.Array],
    rhos: tuple[jax.Array, jax.Array],
    log_rhos: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    order: jax.Array,
    *,
    num_outputs: int = 3,
) -> StepWeights:
    """Weights of every DEIS step (all arguments ``(N,)``; ``order`` in 1..3).

    ``alphas`` and ``rhos`` are ``(at s0, at t)``; ``log_rhos`` are ``(t, s0, s1, s2)``. The
    model outputs are noise predictions. A zero-length step (``rho_t = rho_s0``) is an exact
    no-op: ``I_1(0) = I_2(0) = 0``.
    """
    (alpha_s, alpha_t), (rho_s, rho_t) = alphas, rhos
    log_t, log_s0, log_s1, log_s2 = log_rhos
    second, third = order >= 2, order == 3
    # History an order does not use may be missing (a node at rho = 0 has log rho = -inf).
    d1 = jnp.where(second, log_s1 - log_s0, 0.0)
    d2 = jnp.where(third, log_s2 - log_s0, 0.0)
    i1, i2 = exponential_moments(log_t - log_s0)
    inv_d1 = guarded_inverse(d1, second)
    inv_d2 = guarded_inverse(d2, third)
    inv_d12 = guarded_inverse(d1 - d2, third)
    c1_third = (i2 - d2 * i1) * inv_d1 * inv_d12
    c1 = jnp.where(third, c1_third, jnp.where(second, i1 * inv_d1, 0.0)) * rho_s
    c2 = jnp.where(third, -(i2 - d1 * i1) * inv_d2 * inv_d12, 0.0) * rho_s
    c0 = (rho_t - rho_s) - c1 - c2
    return stack_weights(
        alpha_t / alpha_s,
        (alpha_t * c0, alpha_t * c1, alpha_t * c2),
        jnp.zeros_like(c0),
        num_outputs,
    )


def log_rho_of(level: Level) -> jax.Array:
    """``log rho = log(sigma / alpha)`` (``-inf`` at sigma = 0)."""
    return log_or_minus_inf(level.sigma) - log_or_minus_inf(level.alpha)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DEISSolver(MultistepSolver):
    """DEIS (tAB-DEIS in log rho), orders 1-3. The solver's variable is the noise prediction;
    as in diffusers every other prediction goes through x0: ``eps = (x - alpha x0) / sigma``,
    with flow predictions converted by the raw grid sigma ``s`` (whatever the levels)."""

    def tables(self, grid: Grid, begin_index: int) -> MultistepTables:
        start, end = grid.start, grid.end
        nodes = history_nodes(chain_coordinate(grid, log_rho_of))
        order = self.step_orders(grid, begin_index, nodes)
        rhos = (start.sigma / start.alpha, end.sigma / end.alpha)
        weights = differentiable_where_finite(
            lambda nodes: deis_step_weights(
                (start.alpha, end.alpha), rhos, nodes, order, num_outputs=self.order
            ),
            nodes,
        )
        flow = self.prediction_type == FLOW_PREDICTION
        convert_sigma = start.grid_sigma if flow else start.sigma
        return MultistepTables(start, start.alpha, convert_sigma, weights=weights, order=order)

    def update(self, row, x, model_output, history, noise, thresholds, params):
        alpha, sigma = row.convert_alpha, row.convert_sigma
        x0, eps = convert_prediction(
            self.prediction_type,
            model_output,
            x,
            alpha,
            sigma,
            thresholds,
            thresholding=self.limits.thresholding,
        )
        if self.prediction_type != "epsilon":
            eps = noise_from_data(x, x0, alpha, sigma)
        x_next = linear_update(row.weights, (x,), (eps, *history.outputs), noise)
        return x_next, x0, push(history, eps, x)
