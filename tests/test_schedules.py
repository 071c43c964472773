"""Noise schedules against diffusers and closed forms; traceability in the floats."""

from __future__ import annotations

import warnings

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from _reference import _float64_betas

import jaxsched

KINDS = [
    {"beta_schedule": "linear"},
    {"beta_schedule": "linear", "beta_start": 0.0002, "beta_end": 0.05},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": list(np.linspace(1e-4, 0.02, 1000) ** 0.9)},
    {"beta_schedule": "linear", "num_train_timesteps": 37},
]


def _ours(config: dict, rescale: bool) -> jaxsched.NoiseSchedule:
    kind = config.get("beta_schedule", "linear")
    kwargs = {k: v for k, v in config.items() if k != "beta_schedule"}
    if "trained_betas" in kwargs:
        kwargs["num_train_timesteps"] = len(kwargs["trained_betas"])
    return jaxsched.noise_schedule(kind, rescale_betas_zero_snr=rescale, **kwargs)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("config", KINDS)
def test_float32_tables_match_diffusers(config, rescale):
    """Concrete schedules are built with torch's rounding: bit-for-bit equal tables. The zero-SNR
    rescale goes through torch's float32 sqrt, which is not correctly rounded (1 ulp off for
    ~20% of inputs), and ``betas = 1 - alphas`` then cancels: agreement to that rounding."""
    ref = diffusers.DDIMScheduler(**config, rescale_betas_zero_snr=rescale)
    ours = _ours(config, rescale)
    assert ours.betas.dtype == jnp.float32
    if not rescale:
        np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
        np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())
        return
    np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=3e-5, atol=3e-6)
    np.testing.assert_allclose(
        ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-5, atol=1e-8
    )


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("config", KINDS)
def test_float64_tables_match_float64_formulas(config, rescale):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_config = diffusers.DDIMScheduler(**config, rescale_betas_zero_snr=rescale).config
    betas = _float64_betas(ref_config)
    with jax.enable_x64(True):
        ours = _ours(config, rescale)
        assert ours.betas.dtype == jnp.float64
        np.testing.assert_allclose(ours.betas, betas.numpy(), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(
            ours.alphas_cumprod, torch.cumprod(1 - betas, 0).numpy(), rtol=1e-12, atol=1e-16
        )


def test_zero_terminal_snr_closed_form():
    """Lin et al. (2023) Alg. 1: the last level has zero SNR, the first is unchanged."""
    plain = jaxsched.noise_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012)
    rescaled = jaxsched.noise_schedule(
        "scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True
    )
    assert float(rescaled.alphas_cumprod[-1]) == 0.0
    np.testing.assert_allclose(rescaled.alphas_cumprod[0], plain.alphas_cumprod[0], rtol=1e-6)
    assert bool(jnp.all(jnp.diff(rescaled.alphas_cumprod) < 0))


def test_linear_schedule_closed_form():
    with jax.enable_x64(True):
        sched = jaxsched.noise_schedule(
            "linear", beta_start=0.001, beta_end=0.01, num_train_timesteps=10
        )
        expected = 0.001 + np.arange(10) * 0.001
        np.testing.assert_allclose(sched.betas, expected, rtol=1e-14)
        np.testing.assert_allclose(sched.alphas_cumprod, np.cumprod(1 - expected), rtol=1e-14)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_vmap_over_beta_range_equals_separate_builds(kind):
    starts = jnp.linspace(1e-4, 1e-3, 6)
    ends = jnp.linspace(0.01, 0.03, 6)
    batch = jax.vmap(lambda b0, b1: jaxsched.noise_schedule(kind, beta_start=b0, beta_end=b1))(
        starts, ends
    )
    assert batch.alphas_cumprod.shape == (6, 1000)
    for i in range(6):
        one = jaxsched.noise_schedule(kind, beta_start=float(starts[i]), beta_end=float(ends[i]))
        np.testing.assert_allclose(batch.betas[i], one.betas, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(
            batch.alphas_cumprod[i], one.alphas_cumprod, rtol=1e-5, atol=1e-9
        )


def test_trained_betas_are_traceable():
    betas = jnp.linspace(1e-4, 0.02, 50)
    grad = jax.grad(
        lambda b: jaxsched.noise_schedule(trained_betas=b, num_train_timesteps=50).alphas_cumprod[
            -1
        ]
    )(betas)
    expected = -jnp.prod(1 - betas) / (1 - betas)  # d/d beta_i prod_j (1 - beta_j)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_add_noise_and_velocity_match_diffusers(dtype):
    ref = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sched = jaxsched.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    state = sched.init(10, (3, 2, 4, 4))
    rng = np.random.default_rng(1)
    x0, noise = (rng.standard_normal((3, 2, 4, 4)).astype(np.float32) for _ in range(2))
    t = np.array([0, 500, 999])
    expected = ref.add_noise(torch.tensor(x0), torch.tensor(noise), torch.tensor(t)).numpy()
    velocity = ref.get_velocity(torch.tensor(x0), torch.tensor(noise), torch.tensor(t)).numpy()
    got = sched.add_noise(state, jnp.asarray(x0, dtype), jnp.asarray(noise, dtype), t)
    got_v = sched.get_velocity(state, jnp.asarray(x0, dtype), jnp.asarray(noise, dtype), t)
    assert got.dtype == dtype and got_v.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(got_v, np.float32), velocity, rtol=tol, atol=tol)
    scalar = sched.add_noise(state, jnp.asarray(x0), jnp.asarray(noise), 500)
    np.testing.assert_allclose(scalar[1], expected[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sched.scale_model_input(state, x0, 500), x0)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        jaxsched.noise_schedule("cosine")
