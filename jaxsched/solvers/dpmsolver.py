"""DPM-Solver family: multistep exponential integrators in lambda = log(alpha / sigma).

Lu et al. (2022), "DPM-Solver" (noise form, ``dpmsolver``) and "DPM-Solver++" (data form,
``dpmsolver++``), with their SDE variants. A step from ``s0`` to ``t`` (``h = lambda_t -
lambda_s0``) with converted model outputs ``m0, m1, m2`` at ``s0, s1, s2`` is

    x_t = a x_s0 + k0 D0 + k1 D1 + k2 D2 + c z

with ``D0 = m0`` and the divided differences ``D1, D2`` of DPM-Solver++ (2023), eq. 8 and
Appendix B. Every term is linear in ``(x, m0, m1, m2, z)``, so each order's ``k``'s fold into
the shared :class:`~jaxsched.solvers.multistep.StepWeights`, computed once at ``init``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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
from jaxsched.solvers.prediction import FLOW_PREDICTION
from jaxsched.solvers.safe_math import log_or_minus_inf

ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")
# A step whose |h| is at most this many ulps of |lambda| is a zero-length step (rounding).
ROUNDING_ULPS = 8


def _data_form_terms(algorithm_type: str, solver_type: str, alpha_t, h, exact: bool):
    """``(k0, k1_order2, k1_order3, k2)`` of the data-prediction (``++``) solvers.

    With ``m(lambda_s0 + tau) = D0 + (tau / h) D1 + (tau / h)^2 D2`` the weights are integrals of
    ``e^{-(h - tau)}`` (ODE) or ``2 e^{-2 (h - tau)}`` (SDE; DPM-Solver++, Appendix B) against
    ``1, tau / h, (tau / h)^2``. diffusers' ``k2`` (like the reference DPM-Solver code's) is half
    of the last integral, and its SDE ``k2`` also ends in ``- 0.5`` where ``+ 0.5`` belongs;
    ``exact`` uses the integral.
    """
    sde = algorithm_type.startswith("sde")
    em1 = jnp.expm1(-2.0 * h) if sde else jnp.expm1(-h)  # e^{-h} - 1, or e^{-2h} - 1
    scale = 2.0 * h if sde else h
    k0 = -alpha_t * em1
    heun = alpha_t * (em1 / scale + 1.0)
    k1_second = heun if solver_type == "heun" else 0.5 * k0
    if sde:
        k2 = alpha_t * ((-em1 - scale) / scale**2 + (0.5 if exact else -0.5))
    else:
        k2 = -alpha_t * ((em1 + h) / h**2 - 0.5)
    return k0, k1_second, heun, 2.0 * k2 if exact else k2


def _noise_form_terms(algorithm_type: str, solver_type: str, sigma_t, reach, h, exact: bool):
    """``(k0, k1_order2, k1_order3, k2)`` of the noise-prediction solvers.

    ODE: integrals of ``e^{h - tau}`` against ``1, tau / h, (tau / h)^2``; the SDE variant has
    twice the ODE weights (DPM-Solver++, Appendix B, "SDE-DPM-Solver"). ``k2`` is halved as in
    diffusers unless ``exact``. For ``h > 0`` ``sigma_t e^h`` is written as ``reach = alpha_t
    sigma_s / alpha_s`` (``e^lambda = alpha / sigma``), so a step to ``sigma_t = 0`` (``h =
    inf``) has the finite limit of every weight instead of ``0 * inf``; an inverse step from
    ``sigma_s = 0`` (``h = -inf``) keeps ``sigma_t (e^h - 1) = -sigma_t``.
    """
    factor = 2.0 if algorithm_type.startswith("sde") else 1.0
    # sigma_t (e^h - 1) in the form finite at each end: h = inf (sigma_t = 0, sampling) and
    # h = -inf (sigma_s = 0, inverting from the data)
    growth = jnp.where(h > 0, -reach * jnp.expm1(-jnp.abs(h)), sigma_t * jnp.expm1(-jnp.abs(h)))
    k0 = -factor * growth
    heun = -factor * (growth / h - sigma_t)
    k1_second = heun if solver_type == "heun" else 0.5 * k0
    k2 = -factor * ((growth / h - sigma_t) / h - 0.5 * sigma_t)
    return k0, k1_second, heun, 2.0 * k2 if exact else k2


def sample_and_noise_weights(algorithm_type: str, alpha_s, sigma_s, alpha_t, sigma_t, h):
    """``(a, c)``: the weight of ``x_s`` and of the Gaussian noise ``z`` (0 for ODE solvers).

    The noise-form SDE's ``sigma_t sqrt(e^{2h} - 1)`` is written with ``sigma_t e^h = alpha_t
    sigma_s / alpha_s`` so that it stays finite at ``sigma_t = 0``.
    """
    if algorithm_type == "dpmsolver++":
        return sigma_t / sigma_s, jnp.zeros_like(h)
    if algorithm_type == "dpmsolver":
        return alpha_t / alpha_s, jnp.zeros_like(h)
    if algorithm_type == "sde-dpmsolver++":
        return sigma_t / sigma_s * jnp.exp(-h), sigma_t * jnp.sqrt(-jnp.expm1(-2.0 * h))
    reach = alpha_t * sigma_s / alpha_s
    return alpha_t / alpha_s, reach * jnp.sqrt(-jnp.expm1(-2.0 * h))


def is_moving(lambda_s, lambda_t) -> jax.Array:
    """Whether a step changes the level: ``lambda_t != lambda_s`` beyond rounding.

    Equal infinities (two zero sigmas) are the same level; so is an ``h`` within a few ulps of
    ``|lambda|`` (a karras grid's last point and ``sigma_min`` computed two ways), whose SDE noise
    weight would otherwise be the root of a rounding-negative.
    """
    h = lambda_t - lambda_s
    magnitude = jnp.maximum(jnp.abs(lambda_s), jnp.abs(lambda_t))
    scale = jnp.where(jnp.isfinite(magnitude), jnp.maximum(magnitude, 1.0), 1.0)
    rounding = ROUNDING_ULPS * jnp.finfo(jnp.result_type(h)).eps * scale
    return (lambda_t != lambda_s) & ~(jnp.abs(h) <= rounding)


def step_weights(
    algorithm_type: str,
    solver_type: str,
    alphas: tuple[jax.Array, jax.Array],
    sigmas: tuple[jax.Array, jax.Array],
    lambdas: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    order: jax.Array,
    *,
    exact_third_order: bool = False,
    num_outputs: int = 3,
) -> StepWeights:
    """Weights of every step (all arguments ``(N,)``; ``order`` in 1..3).

    ``alphas``/``sigmas`` are ``(at s0, at t)``; ``lambdas`` are ``(t, s0, s1, s2)``. Orders fold
    the divided differences into the model-output weights:
    ``D1 = (m0 - m1) / r0`` (order 2) and, for order 3, ``D1 = D1_0 + r0 / (r0 + r1) (D1_0 -
    D1_1)``, ``D2 = (D1_0 - D1_1) / (r0 + r1)`` with ``r0 = h0 / h``, ``r1 = h1 / h``.
    A zero-length step (``h = 0`` up to rounding, see :func:`is_moving`) is an exact no-op:
    ``a = 1`` and every other weight 0.
    ``exact_third_order`` uses third-order weights that integrate quadratics exactly.
    ``num_outputs`` model-output weights are kept (the solver order: the history it has).
    """
    (alpha_s, alpha_t), (sigma_s, sigma_t) = alphas, sigmas
    lambda_t, lambda_s0, lambda_s1, lambda_s2 = lambdas
    h = lambda_t - lambda_s0
    moving = is_moving(lambda_s0, lambda_t)
    safe_h = jnp.where(moving, h, 1.0)
    a, c = sample_and_noise_weights(algorithm_type, alpha_s, sigma_s, alpha_t, sigma_t, safe_h)
    if algorithm_type.endswith("++"):
        k0, k1_second, k1_third, k2 = _data_form_terms(
            algorithm_type, solver_type, alpha_t, safe_h, exact_third_order
        )
    else:
        reach = alpha_t * sigma_s / alpha_s
        k0, k1_second, k1_third, k2 = _noise_form_terms(
            algorithm_type, solver_type, sigma_t, reach, safe_h, exact_third_order
        )
    r0 = (lambda_s0 - lambda_s1) / safe_h
    r1 = (lambda_s1 - lambda_s2) / safe_h
    # Divided differences need distinct history points; orders that would divide by 0 are
    # never selected (see effective_order), so guard the divisions only.
    inv_r0 = guarded_inverse(r0, order >= 2)
    inv_r1 = guarded_inverse(r1, order >= 3)
    inv_sum = guarded_inverse(r0 + r1, order >= 3)
    # Order 3: weights of D1_0 and D1_1.
    g0 = k1_third * (1.0 + r0 * inv_sum) + k2 * inv_sum
    g1 = -k1_third * r0 * inv_sum - k2 * inv_sum
    second = order == 2
    third = order == 3
    g0 = jnp.where(third, g0, jnp.where(second, k1_second, 0.0))
    g1 = jnp.where(third, g1, 0.0)
    b0 = k0 + g0 * inv_r0
    b1 = -g0 * inv_r0 + g1 * inv_r1
    b2 = -g1 * inv_r1
    zero = jnp.zeros_like(h)
    return stack_weights(
        jnp.where(moving, a, 1.0),
        tuple(jnp.where(moving, b, zero) for b in (b0, b1, b2)),
        jnp.where(moving, c, zero),
        num_outputs,
    )


def lambda_of(level: Level) -> jax.Array:
    """``lambda = log(alpha / sigma)``, the half log-SNR (``inf`` at sigma = 0)."""
    return log_or_minus_inf(level.alpha) - log_or_minus_inf(level.sigma)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolver(MultistepSolver):
    """DPM-Solver (noise form) and DPM-Solver++ (data form), ODE or SDE, orders 1-3.

    The solver's variable is the x0 prediction for ``++`` algorithms, the noise prediction
    otherwise; with ``prediction_type="flow_prediction"`` diffusers converts with the raw grid
    sigma ``(1 - s, s)``, flow sigmas or not.
    """

    algorithm_type: str
    solver_type: str
    exact_third_order: bool = False

    @property
    def data_form(self) -> bool:
        return self.algorithm_type.endswith("++")

    def tables(self, grid: Grid, begin_index: int) -> MultistepTables:
        """Every step's tables; a step to sigma = 0 (``h = inf``) is first order, as diffusers
        makes a final step to a zero sigma (the higher-order terms divide a finite slope by
        ``r = h_prev / h = 0``)."""
        start, end = grid.start, grid.end
        nodes = history_nodes(chain_coordinate(grid, lambda_of))
        order = jnp.where(jnp.isfinite(nodes[0]), self.step_orders(grid, begin_index, nodes), 1)
        weights = differentiable_where_finite(
            lambda nodes: step_weights(
                self.algorithm_type,
                self.solver_type,
                (start.alpha, end.alpha),
                (start.sigma, end.sigma),
                nodes,
                order,
                exact_third_order=self.exact_third_order,
                num_outputs=self.rules.solver_order,
            ),
            nodes,
        )
        if self.prediction_type == FLOW_PREDICTION:
            convert = (1.0 - start.grid_sigma, start.grid_sigma)
        else:
            convert = (start.alpha, start.sigma)
        return MultistepTables(start, *convert, weights=weights, order=order)

    def stochastic(self, params: dict[str, Any]) -> bool:
        return self.algorithm_type.startswith("sde")

    def update(self, row, x, model_output, history, noise, thresholds, params):
        x0, eps = convert_prediction(
            self.prediction_type,
            model_output,
            x,
            row.convert_alpha,
            row.convert_sigma,
            thresholds,
            thresholding=self.limits.thresholding,
        )
        m = x0 if self.data_form else eps
        x_next = linear_update(row.weights, (x,), (m, *history.outputs), noise)
        return x_next, x0, push(history, m, x)
