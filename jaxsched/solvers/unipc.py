"""UniPC: a multistep predictor (UniP) and corrector (UniC) in lambda = log(alpha / sigma).

Zhao et al. (2023), "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", Algorithms 1-2 with the ``B(h)`` variants of sec. 3.3 (``bh1``: ``B(h) = h``;
``bh2``: ``B(h) = e^h - 1``). One model call per step: at step ``i`` the model output ``m_i``
at the predicted ``x_i`` first corrects ``x_i`` (UniC, from the previous corrected sample and
the outputs ``m_{i-1}, m_{i-2}, ...`` plus ``m_i``), then the predictor steps on from the
corrected sample (UniP). Both are linear in the samples and outputs, so ``init`` folds them into
two :class:`~jaxsched.solvers.multistep.StepWeights` rows per step.

From ``s0`` to ``t`` (``h = lambda_t - lambda_s0``, ``z = -h`` in the data form, ``h`` in the
noise form), with history ratios ``r_k = (lambda_sk - lambda_s0) / h`` and
``D_k = (m_k - m0) / r_k``:

    x_t = a x - S (e^z - 1) m0 - S B(h) sum_k rho_k D_k

(``a = sigma_t / sigma_s0``, ``S = alpha_t`` in the data form; ``a = alpha_t / alpha_s0``,
``S = sigma_t`` in the noise form). The ``rho`` solve the Vandermonde system
``sum_k rho_k r_k^(j-1) = b_j``, ``b_j = z phi_{j+1}(z) j! / B(h)`` (eq. 9 and Algorithm 2;
``phi_k`` the exponential-integrator phi functions). The corrector adds the node ``r = 1`` for
``D_t = m_t - m0``. As in diffusers, order 2 of the predictor and order 1 of the corrector use
``rho = 1/2`` instead of solving.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsched.grids.levels import Grid, Level
from jaxsched.solvers.dpmsolver import is_moving, lambda_of
from jaxsched.solvers.multistep import (
    MultistepSolver,
    StepWeights,
    chain_coordinate,
    convert_prediction,
    differentiable_where_finite,
    guarded_inverse,
    history_nodes,
    linear_update,
)
from jaxsched.solvers.prediction import FLOW_PREDICTION

SOLVER_TYPES = ("bh1", "bh2")
# diffusers accepts DPM-Solver / DEIS names here and runs bh2 with them.
SOLVER_ALIASES = ("midpoint", "heun", "logrho")

# |z| below which phi_2..phi_4 come from their Taylor series (20 terms: float64 precision).
SERIES_RADIUS = 1.0
SERIES_TERMS = 20


def phi_functions(z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(phi_2, phi_3, phi_4)(z)`` with ``phi_k(z) = sum_n z^n / (n + k)!``, elementwise,
    without the cancellation of the recursion ``phi_{k+1} = (phi_k - 1 / k!) / z`` near 0
    (Taylor series for ``|z| <= 1``, the recursion beyond). ``z = -inf`` gives 0."""
    small = jnp.abs(z) <= SERIES_RADIUS
    near = jnp.where(small, z, 0.0)
    series = [jnp.zeros_like(near) for _ in range(3)]
    power = jnp.ones_like(near)
    for n in range(SERIES_TERMS):
        for k in range(3):
            series[k] = series[k] + power * (1.0 / math.factorial(n + k + 2))
        power = power * near
    far = jnp.where(small | ~jnp.isfinite(z), -2.0, z)
    phi = jnp.expm1(far) / far
    closed = []
    for k in range(1, 4):
        phi = (phi - 1.0 / math.factorial(k)) / far
        closed.append(phi)
    at_minus_inf = z == -jnp.inf
    return tuple(
        jnp.where(small, s, jnp.where(at_minus_inf, 0.0, c))
        for s, c in zip(series, closed, strict=True)
    )


class UniPCTables(NamedTuple):
    """Per-step tables of UniPC, each ``(N,)`` leading.

    Attributes:
        start: the level each step starts from.
        convert_alpha, convert_sigma: the scales that convert the model output there.
        corrector: weights of ``(x_i, x_{i-1} corrected)`` and of ``(m_i, m_{i-1}, ...)`` that
            give the corrected ``x_i`` (``x_i`` itself where the corrector is off).
        predictor: weights of the corrected ``x_i`` and of ``(m_i, m_{i-1}, ...)`` that give
            ``x_{i+1}``.
        order: the predictor's order at each step (the corrector of the next step uses it).
        replacement: the tables of ``solver_p`` (another scheduler's solver), which then makes
            the prediction from the corrected sample; ``()`` without one.
    """

    start: Level
    convert_alpha: jax.Array
    convert_sigma: jax.Array
    corrector: StepWeights
    predictor: StepWeights
    order: jax.Array
    replacement: Any = ()


class UniPCHistory(NamedTuple):
    """UniPC's memory: the previous converted outputs (newest first), the previous corrected
    sample, and the history of ``solver_p`` (``()`` without one)."""

    outputs: tuple[jax.Array, ...]
    samples: tuple[jax.Array, ...]
    replacement: Any = ()


def _vandermonde_b(z: jax.Array, solver_type: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(b_1, b_2, b_3)``, ``b_j = z phi_{j+1}(z) j! / B(h)`` (UniPC, eq. 9), for finite
    nonzero ``z``."""
    phi2, phi3, phi4 = phi_functions(z)
    scale = 1.0 if solver_type == "bh1" else z / jnp.expm1(z)  # z / B(h)
    return scale * phi2, scale * 2.0 * phi3, scale * 6.0 * phi4


def unipc_terms(
    solver_type: str,
    data_form: bool,
    alphas: tuple[jax.Array, jax.Array],
    sigmas: tuple[jax.Array, jax.Array],
    lambdas: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    order: jax.Array,
):
    """The predictor's and corrector's weights of every step from ``s0`` to ``t`` (arguments
    ``(N,)``: ``alphas``, ``sigmas`` at ``(s0, t)``, ``lambdas`` at ``(t, s0, s1, s2)``;
    ``order`` in 1..3, the predictor order of the step, which the corrector of ``t`` reuses).

    Returns ``(a, predictor outputs (m0, m1, m2), corrector outputs (m_t, m0, m1, m2))``,
    ``a`` the weight of the sample at ``s0``. A zero-length step is an exact no-op
    (``a = 1``, every output weight 0), where diffusers divides 0 by 0. A step to sigma = 0
    (``h = inf``, first order) has its finite limit, ``x_t = x0`` prediction, where diffusers'
    ``bh1`` and noise form meet ``0 * inf``; no corrector ever redoes it (the last step).
    """
    (alpha_s, alpha_t), (sigma_s, sigma_t) = alphas, sigmas
    lambda_t, lambda_s0, lambda_s1, lambda_s2 = lambdas
    h = lambda_t - lambda_s0
    moving = is_moving(lambda_s0, lambda_t)
    safe_h = jnp.where(moving, h, 1.0)
    finite = jnp.isfinite(safe_h)
    z = -safe_h if data_form else safe_h
    if data_form:
        a, scale = sigma_t / sigma_s, alpha_t
        s_em1 = alpha_t * jnp.expm1(z)  # S h phi_1(h); -alpha_t at h = inf
    else:
        a, scale = alpha_t / alpha_s, sigma_t
        # sigma_t (e^h - 1), finite at h = inf: sigma_t e^h = alpha_t sigma_s / alpha_s.
        reach = alpha_t * sigma_s / alpha_s
        grow = jnp.expm1(-jnp.abs(safe_h))
        s_em1 = jnp.where(safe_h > 0, -reach * grow, sigma_t * grow)
    finite_z = jnp.where(finite, z, 1.0)
    sb = jnp.where(finite, s_em1 if solver_type == "bh2" else scale * finite_z, 0.0)
    b1, b2, b3 = _vandermonde_b(finite_z, solver_type)
    second, third = order >= 2, order == 3
    r1 = jnp.where(second, (lambda_s1 - lambda_s0) / safe_h, -1.0)
    r2 = jnp.where(third, (lambda_s2 - lambda_s0) / safe_h, -2.0)
    # Predictor: order 2 uses rho = 1/2; order 3 solves on the nodes (r1, r2).
    inv_r21 = guarded_inverse(r2 - r1, third)
    p1 = jnp.where(third, (b1 * r2 - b2) * inv_r21, jnp.where(second, 0.5, 0.0))
    p2 = jnp.where(third, (b2 - b1 * r1) * inv_r21, 0.0)
    # Corrector: order 1 uses rho_t = 1/2; orders 2 and 3 solve on (r1, 1) or (r1, r2, 1),
    # in the Lagrange form of the transposed Vandermonde system.
    inv_1r1 = guarded_inverse(1.0 - r1, second)
    inv_1r2 = guarded_inverse(1.0 - r2, third)
    c1_third = (b3 - b2 * (r2 + 1.0) + b1 * r2) * inv_r21 * inv_1r1
    c2_third = -(b3 - b2 * (r1 + 1.0) + b1 * r1) * inv_r21 * inv_1r2
    ct_third = (b3 - b2 * (r1 + r2) + b1 * r1 * r2) * inv_1r1 * inv_1r2
    c1 = jnp.where(third, c1_third, jnp.where(second, (b1 - b2) * inv_1r1, 0.0))
    c2 = jnp.where(third, c2_third, 0.0)
    ct = jnp.where(third, ct_third, jnp.where(second, (b2 - b1 * r1) * inv_1r1, 0.5))
    inv_r1 = guarded_inverse(r1, second)
    inv_r2 = guarded_inverse(r2, third)
    predictor = (
        -s_em1 + sb * (p1 * inv_r1 + p2 * inv_r2),
        -sb * p1 * inv_r1,
        -sb * p2 * inv_r2,
    )
    corrector = (
        -sb * ct,
        -s_em1 + sb * (c1 * inv_r1 + c2 * inv_r2 + ct),
        -sb * c1 * inv_r1,
        -sb * c2 * inv_r2,
    )
    zero = jnp.zeros_like(h)
    return (
        jnp.where(moving, a, 1.0),
        tuple(jnp.where(moving, w, zero) for w in predictor),
        tuple(jnp.where(moving & finite, w, zero) for w in corrector),
    )


def _previous(values: jax.Array, fill) -> jax.Array:
    """``values`` shifted one step later along the leading axis, ``fill`` first."""
    first = jnp.full_like(values[:1], fill)
    return jnp.concatenate([first, values[:-1]])


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniPCSolver(MultistepSolver):
    """UniPC (bh1 / bh2, data or noise form), predictor orders 1-3 with the corrector.

    The corrector runs at every step but a run's first and those after a ``disable_corrector``
    index. With the corrector the declared order is ``solver_order + 1`` (UniPC, Theorem 3.1).
    ``correct_first_step=False`` leaves a run's first step uncorrected (the inverse's choice).
    ``solver_p`` (a deterministic one-call-per-step scheduler) replaces the predictor: its own
    update, tables and history step from the corrected sample with the raw model output, as
    diffusers calls ``solver_p.step``.
    """

    solver_type: str
    predict_x0: bool
    disable_corrector: tuple[int, ...] = ()
    solver_p: Any = None
    correct_first_step: bool = True

    @property
    def order(self) -> int:
        return self.rules.solver_order + 1

    @property
    def history(self) -> int:
        return self.rules.solver_order

    def initial_history(self, shape: tuple[int, ...], dtype) -> UniPCHistory:
        zeros = lambda: jnp.zeros(shape, dtype)  # noqa: E731
        replacement = ()
        if self.solver_p is not None:
            replacement = self.solver_p.solver.initial_history(shape, dtype)
        return UniPCHistory(
            outputs=tuple(zeros() for _ in range(self.history)),
            samples=(zeros(),),
            replacement=replacement,
        )

    def tables(self, grid: Grid, begin_index: int) -> UniPCTables:
        """Every step's tables. A step to sigma = 0 is first order (its ``h`` is infinite, so
        the history ratios are 0: diffusers divides by them and returns NaN there when
        ``lower_order_final`` is off)."""
        start, end = grid.start, grid.end
        nodes = history_nodes(chain_coordinate(grid, lambda_of))
        order = jnp.where(jnp.isfinite(nodes[0]), self.step_orders(grid, begin_index, nodes), 1)
        a, predictor, corrector = differentiable_where_finite(
            lambda nodes: unipc_terms(
                self.solver_type,
                self.predict_x0,
                (start.alpha, end.alpha),
                (start.sigma, end.sigma),
                nodes,
                order,
            ),
            nodes,
        )
        n = grid.timesteps.shape[0]
        steps = jnp.arange(n)
        disabled = jnp.isin(steps - 1, jnp.asarray(self.disable_corrector or (-1,), jnp.int32))
        corrects = (steps > begin_index) & ~disabled
        if not self.correct_first_step:
            corrects = corrects & (steps != begin_index + 1)
        # The corrector of step i redoes step i - 1 with m_i: step i - 1's weights, one row on.
        on = lambda w: jnp.where(corrects, _previous(w, 0.0), 0.0)  # noqa: E731
        corrector_weights = StepWeights(
            samples=jnp.stack([jnp.where(corrects, 0.0, 1.0), on(a)], -1),
            outputs=jnp.stack([on(w) for w in corrector[: self.history + 1]], -1),
            noise=jnp.zeros_like(a),
        )
        predictor_weights = StepWeights(
            samples=a[:, None],
            outputs=jnp.stack(predictor[: self.history], -1),
            noise=jnp.zeros_like(a),
        )
        if self.prediction_type == FLOW_PREDICTION:
            convert = (1.0 - start.grid_sigma, start.grid_sigma)
        else:
            convert = (start.alpha, start.sigma)
        replacement = ()
        if self.solver_p is not None:
            replacement = self.solver_p.solver.tables(self.solver_p.grid(n), begin_index)
        return UniPCTables(
            start, *convert, corrector_weights, predictor_weights, order, replacement
        )

    def update(self, row, x, model_output, history, noise, thresholds, params: dict[str, Any]):
        x0, eps = convert_prediction(
            self.prediction_type,
            model_output,
            x,
            row.convert_alpha,
            row.convert_sigma,
            thresholds,
            thresholding=self.limits.thresholding and self.predict_x0,
        )
        m = x0 if self.predict_x0 else eps
        outputs = (m, *history.outputs)
        corrected = linear_update(row.corrector, (x, *history.samples), outputs, None)
        replacement = ()
        if self.solver_p is None:
            x_next = linear_update(row.predictor, (corrected,), outputs[: self.history], None)
        else:
            predictor = self.solver_p.solver
            x_next, _, replacement = predictor.update(
                row.replacement,
                corrected,
                model_output,
                history.replacement,
                None,
                predictor.thresholds(x.dtype),
                self.solver_p.step_params,
            )
        new_history = UniPCHistory(outputs[: self.history], (corrected,), replacement)
        return x_next, x0, new_history
