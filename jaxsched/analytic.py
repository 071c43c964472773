"""An exact test problem: data from an isotropic Gaussian mixture, whose optimal noise
prediction ``E[eps | x_t]`` is closed-form. Used by the example, the tests and benchmarks."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsched.schedules import NoiseSchedule, alphas_cumprod_at


class GaussianMixture(NamedTuple):
    """``p(x0) = sum_k w_k N(means_k, scales_k^2 I)`` in ``D`` dimensions.

    Attributes:
        means: ``(K, D)`` component means.
        scales: ``(K,)`` component standard deviations.
        log_weights: ``(K,)`` log mixture weights (normalised or not).
    """

    means: jax.Array
    scales: jax.Array
    log_weights: jax.Array

    def sample(self, key: jax.Array, num: int) -> jax.Array:
        """``(num, D)`` draws from the mixture."""
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.categorical(k_comp, self.log_weights, shape=(num,))
        noise = jax.random.normal(k_noise, (num, self.means.shape[1]), self.means.dtype)
        return self.means[comp] + self.scales[comp, None] * noise


def random_mixture(key: jax.Array, num_components: int, dim: int, *, spread=0.6, scale=0.15):
    """A :class:`GaussianMixture` with random means ``~ N(0, spread^2)`` and equal weights."""
    means = spread * jax.random.normal(key, (num_components, dim))
    return GaussianMixture(
        means=means,
        scales=jnp.full((num_components,), scale, means.dtype),
        log_weights=jnp.zeros((num_components,), means.dtype),
    )


def optimal_epsilon(mixture: GaussianMixture, x: jax.Array, abar) -> jax.Array:
    """``E[eps | x_t = x]`` at level ``abar`` for ``x`` of shape ``(B, D)``.

    Given component ``k``, ``x_t ~ N(sqrt(abar) m_k, v_k I)`` with
    ``v_k = abar s_k^2 + 1 - abar``, and ``E[eps | x_t, k] = sqrt(1 - abar) (x - sqrt(abar) m_k)
    / v_k``; the answer weights these by the posterior responsibilities of ``x``.
    """
    alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
    var = abar * mixture.scales**2 + (1.0 - abar)  # (K,)
    centred = x[:, None, :] - alpha * mixture.means[None]  # (B, K, D)
    dim = x.shape[-1]
    log_lik = -0.5 * jnp.sum(centred**2, -1) / var - 0.5 * dim * jnp.log(var)
    resp = jax.nn.softmax(mixture.log_weights + log_lik, axis=-1)  # (B, K)
    return sigma * jnp.einsum("bk,bkd->bd", resp / var, centred)


def epsilon_model(mixture: GaussianMixture, schedule: NoiseSchedule):
    """``model_fn(x, t)``: the exact noise prediction at training timestep ``t``, an integer or
    a continuous one (a custom sigma grid's; see :func:`jaxsched.schedules.alphas_cumprod_at`)."""

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        abar = alphas_cumprod_at(schedule, t).astype(x.dtype)
        return optimal_epsilon(mixture, x, abar).astype(x.dtype)

    return model_fn


def posterior_mean(mixture: GaussianMixture, x: jax.Array, abar) -> jax.Array:
    """``E[x0 | x_t = x] = (x - sqrt(1 - abar) E[eps | x]) / sqrt(abar)``, ``x`` of shape
    ``(B, D)``."""
    eps = optimal_epsilon(mixture, x, abar)
    return (x - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)


def probability_flow(
    mixture: GaussianMixture, x_start, lambda_start: float, lambda_end: float, *, tol=1e-11
) -> np.ndarray:
    """The exact probability-flow ODE solution from ``lambda_start`` to ``lambda_end``
    (``lambda = log(alpha / sigma)``), float64 ``(B, D)``: ground truth for solvers.

    The ODE is ``dx/dlambda = -alpha^2 x + alpha E[x0 | x]`` (DPM-Solver++, Lu et al. 2022,
    eq. 4 with ``alpha^2 + sigma^2 = 1``), solved by scipy's DOP853 at relative and absolute
    tolerance ``tol`` in float64. Needs scipy (in the test extra).
    """
    from scipy.integrate import solve_ivp

    x_start = np.asarray(x_start, np.float64)

    def velocity(lam, y):
        abar = 1.0 / (1.0 + np.exp(-2.0 * lam))
        with jax.enable_x64(True):
            x0 = np.asarray(posterior_mean(mixture, jnp.asarray(y.reshape(x_start.shape)), abar))
        return (-abar * y + np.sqrt(abar) * x0.ravel()).ravel()

    solution = solve_ivp(
        velocity, (lambda_start, lambda_end), x_start.ravel(), method="DOP853", rtol=tol, atol=tol
    )
    if not solution.success:
        raise RuntimeError(f"the probability-flow ODE did not solve: {solution.message}")
    return solution.y[:, -1].reshape(x_start.shape)


def sample_at_grid_levels(scheduler, num_inference_steps: int, mixture: GaussianMixture, x):
    """``(sample, sigmas)``: a multistep scheduler's run with the exact noise prediction taken at
    each step's own grid level ``abar = 1 / (1 + sigma^2)``, not at the rounded integer training
    timestep a network is called with, so the error is the solver's alone.

    Args:
        scheduler: a DPM-Solver or DEIS scheduler (variance-preserving sigmas).
        num_inference_steps: ``N``.
        mixture: the data distribution.
        x: ``(B, D)`` starting sample.

    Returns:
        The final sample ``(B, D)`` and the ``(N + 1,)`` sigma grid.
    """
    sigmas = scheduler.grid(num_inference_steps).sigmas
    levels = 1.0 / (1.0 + jnp.asarray(sigmas)[:num_inference_steps] ** 2)

    def body(carry, abar):
        state, x = carry
        t = state.timesteps[state.step_index]
        return scheduler.step(state, optimal_epsilon(mixture, x, abar), t, x), None

    state = scheduler.init(num_inference_steps, jnp.shape(x), jnp.result_type(x))
    (_, out), _ = jax.lax.scan(body, (state, x), levels)
    return out, sigmas


def flow_velocity(mixture: GaussianMixture, x: jax.Array, s) -> jax.Array:
    """``E[eps - x0 | x_s = x]`` on the rectified-flow path ``x_s = (1 - s) x0 + s eps``, for
    ``x`` of shape ``(B, D)``: the exact velocity a flow-matching model learns.

    Given component ``k``, ``x_s ~ N((1 - s) m_k, v_k I)`` with ``v_k = (1 - s)^2 s_k^2 +
    s^2``; then ``E[eps | x, k] = s (x - (1 - s) m_k) / v_k`` and ``E[x0 | x, k] = m_k + (1 -
    s) s_k^2 (x - (1 - s) m_k) / v_k``, weighted by the posterior responsibilities of ``x``.
    """
    keep = 1.0 - s
    var = keep**2 * mixture.scales**2 + s**2  # (K,)
    centred = x[:, None, :] - keep * mixture.means[None]  # (B, K, D)
    dim = x.shape[-1]
    log_lik = -0.5 * jnp.sum(centred**2, -1) / var - 0.5 * dim * jnp.log(var)
    resp = jax.nn.softmax(mixture.log_weights + log_lik, axis=-1)  # (B, K)
    slope = (s - keep * mixture.scales**2) / var  # (K,): d(eps - x0) / d(centred)
    return jnp.einsum("bk,bkd->bd", resp * slope, centred) - resp @ mixture.means


def velocity_model(mixture: GaussianMixture, num_train_timesteps: int = 1000):
    """``model_fn(x, t)``: the exact flow velocity at ``s = t / T`` (a flow-matching model's
    timestep convention)."""

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        s = jnp.asarray(t, x.dtype) / num_train_timesteps
        return flow_velocity(mixture, x, s).astype(x.dtype)

    return model_fn


def flow_ode(mixture: GaussianMixture, x_start, s_start: float, s_end: float, *, tol=1e-11):
    """The exact rectified-flow ODE ``dx/ds = E[eps - x0 | x]`` from ``s_start`` to ``s_end``,
    float64 ``(B, D)``, by scipy's DOP853 at tolerance ``tol``: ground truth for flow
    samplers (the flow twin of :func:`probability_flow`). Needs scipy."""
    from scipy.integrate import solve_ivp

    x_start = np.asarray(x_start, np.float64)

    def velocity(s, y):
        with jax.enable_x64(True):
            v = flow_velocity(mixture, jnp.asarray(y.reshape(x_start.shape)), s)
        return np.asarray(v).ravel()

    solution = solve_ivp(
        velocity, (s_start, s_end), x_start.ravel(), method="DOP853", rtol=tol, atol=tol
    )
    if not solution.success:
        raise RuntimeError(f"the flow ODE did not solve: {solution.message}")
    return solution.y[:, -1].reshape(x_start.shape)
