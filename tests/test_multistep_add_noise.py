"""DPM-Solver's and DEIS's grid-based ``add_noise`` against diffusers' (no ``begin_index``):
timesteps on the grid, off it (the last level), repeated on it (the second position)."""

from __future__ import annotations

import warnings

import chex
import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxsched

CASES = [
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    (
        "DPMSolverMultistepScheduler",
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    ),
    ("DPMSolverMultistepScheduler", {"prediction_type": "flow_prediction"}),
    ("DPMSolverMultistepInverseScheduler", {"timestep_spacing": "trailing"}),
    ("DEISMultistepScheduler", {"use_karras_sigmas": True}),
    (
        "DPMSolverMultistepScheduler",
        {"use_karras_sigmas": True, "beta_schedule": "scaled_linear", "beta_end": 0.012},
    ),
    ("DEISMultistepScheduler", {"beta_schedule": "squaredcos_cap_v2"}),
]


def _reference(name: str, config: dict, steps: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, name)(**config)
    ref.set_timesteps(steps)
    return ref


@pytest.mark.parametrize(("name", "config"), CASES)
@pytest.mark.parametrize("jit", [False, True])
def test_add_noise_matches_diffusers(name, config, jit):
    steps = 100  # enough that rounded karras timesteps repeat near t = 0
    ref = _reference(name, config, steps)
    sched = getattr(jaxsched, name)(**config)
    state = sched.init(steps, (5, 3, 4))
    grid = ref.timesteps.numpy()
    # on the grid, off the grid, and a repeated one where the grid repeats
    values, counts = np.unique(grid, return_counts=True)
    repeated = values[counts > 1][:1].tolist()
    assert repeated or not config.get("use_karras_sigmas"), grid
    timesteps = np.asarray([grid[0], grid[3], grid[-1], 7, *repeated][:5], grid.dtype)
    timesteps = np.pad(timesteps, (0, 5 - len(timesteps)), mode="edge")
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((5, 3, 4)).astype(np.float32)
    noise = rng.standard_normal((5, 3, 4)).astype(np.float32)
    expected = ref.add_noise(torch.tensor(x0), torch.tensor(noise), torch.tensor(timesteps))
    add_noise = jax.jit(sched.add_noise) if jit else sched.add_noise
    got = add_noise(state, jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(timesteps))
    chex.assert_trees_all_close(got, jnp.asarray(expected.numpy()), rtol=1e-5, atol=1e-6)


def test_a_scalar_timestep_and_low_precision_samples():
    sched = jaxsched.DPMSolverMultistepScheduler()
    state = sched.init(10, (2, 3))
    x0 = jnp.ones((2, 3), jnp.bfloat16)
    out = sched.add_noise(state, x0, jnp.zeros_like(x0), state.timesteps[4])
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 3)
    alpha = state.coefficients.start.alpha[4]
    np.testing.assert_allclose(np.asarray(out, np.float32), float(alpha), rtol=1e-2)
