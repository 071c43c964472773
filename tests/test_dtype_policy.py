"""The dtype policy under ``jax_numpy_dtype_promotion="strict"``: half-precision samples are
updated in float32 and returned in their own dtype, float64 stays float64 with x64, and no
table silently promotes a sample (strict mode raises on any implicit promotion)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsched

SCHEDULERS = {
    "DDIM eta=1": (jaxsched.DDIMScheduler(thresholding=True), {"eta": 1.0, "key": True}),
    "DDIM inverse": (jaxsched.DDIMInverseScheduler(), {}),
    "DPM++ 2M": (jaxsched.DPMSolverMultistepScheduler(), {}),
    "SDE-DPM++ 3M thresholding": (
        jaxsched.DPMSolverMultistepScheduler(
            algorithm_type="sde-dpmsolver++", solver_order=3, thresholding=True
        ),
        {"key": True},
    ),
    "DPM++ inverse": (jaxsched.DPMSolverMultistepInverseScheduler(), {}),
    "DEIS 3": (jaxsched.DEISMultistepScheduler(solver_order=3), {}),
    "DEIS inverse": (jaxsched.DEISMultistepInverseScheduler(), {}),
    "Flow Euler stochastic": (
        jaxsched.FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True),
        {"key": True},
    ),
    "Flow Euler inverse": (jaxsched.FlowMatchEulerInverseScheduler(), {}),
    "Flow Heun churn": (jaxsched.FlowMatchHeunDiscreteScheduler(), {"s_churn": 1.0, "key": True}),
    "UniPC 3 thresholding": (
        jaxsched.UniPCMultistepScheduler(solver_order=3, thresholding=True),
        {},
    ),
    "UniPC inverse": (jaxsched.UniPCMultistepInverseScheduler(), {}),
}
X = jax.random.normal(jax.random.key(0), (2, 3, 4))


def test_every_registered_scheduler_has_a_dtype_case():
    """A new family joins the registry and this table together."""
    assert {type(sched).__name__ for sched, _ in SCHEDULERS.values()} == set(jaxsched.SCHEDULERS)


def _model(x, t):
    return 0.5 * x


def _sample(name: str, x: jax.Array) -> jax.Array:
    sched, options = SCHEDULERS[name]
    kwargs = {k: jax.random.key(1) if k == "key" else v for k, v in options.items()}
    state = sched.init(6, x.shape, x.dtype)
    return jaxsched.sample(sched, state, _model, x, **kwargs)


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_samples_keep_their_dtype_under_strict_promotion(name, dtype):
    with jax.numpy_dtype_promotion("strict"):
        out = _sample(name, X.astype(dtype))
        reference = _sample(name, X)
    assert out.dtype == dtype
    tolerance = {jnp.float32: 1e-6, jnp.bfloat16: 5e-2, jnp.float16: 5e-3}[dtype]
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(reference), rtol=tolerance, atol=tolerance
    )


@pytest.mark.parametrize("name", ["DDIM eta=1", "DPM++ 2M", "DEIS inverse"])
def test_float64_end_to_end_with_x64(name):
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        x = jnp.asarray(np.asarray(X), jnp.float64)
        sched, _ = SCHEDULERS[name]
        state = sched.init(6, x.shape)
        assert all(
            leaf.dtype in (jnp.float64, jnp.int32)
            for leaf in jax.tree.leaves(state)
            if jnp.issubdtype(leaf.dtype, jnp.number)
        )
        assert _sample(name, x).dtype == jnp.float64


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_add_noise_keeps_the_sample_dtype_under_strict_promotion(dtype):
    x = X.astype(dtype)
    with jax.numpy_dtype_promotion("strict"):
        for sched in (jaxsched.DDIMScheduler(), jaxsched.DPMSolverMultistepScheduler()):
            state = sched.init(10, x.shape)
            out = sched.add_noise(state, x, jnp.zeros_like(x), state.timesteps[3])
            assert out.dtype == dtype
