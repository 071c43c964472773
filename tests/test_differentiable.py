"""Differentiable sampling: ``jax.grad`` through ``sample`` and ``invert`` with respect to the
starting sample, the model's parameters and the noise schedule, checked against central finite
differences in float64; rematerialization changes the memory, never the gradient."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsched

DIM = 4
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085}
BETA_END = 0.012

SCHEDULERS = {
    "DDIM": jaxsched.DDIMScheduler(**SD, beta_end=BETA_END),
    "DDIM eta=1 (fixed noise)": jaxsched.DDIMScheduler(**SD, beta_end=BETA_END),
    # The default grid ends at sigma = 0 (lambda = inf): its last step must not give NaN.
    "DPM++ 2M": jaxsched.DPMSolverMultistepScheduler(**SD, beta_end=BETA_END),
    "DPM++ 3M karras": jaxsched.DPMSolverMultistepScheduler(
        **SD, beta_end=BETA_END, solver_order=3, use_karras_sigmas=True
    ),
    "SDE-DPM++ 2M": jaxsched.DPMSolverMultistepScheduler(
        **SD, beta_end=BETA_END, algorithm_type="sde-dpmsolver++"
    ),
    "DEIS 2": jaxsched.DEISMultistepScheduler(**SD, beta_end=BETA_END),
}


def tiny_model(params, x, t):
    """A smooth two-layer network predicting epsilon, ``(B, DIM) -> (B, DIM)``."""
    hidden = jnp.tanh(x @ params["w1"] + params["b1"] + 1e-3 * t.astype(x.dtype))
    return hidden @ params["w2"] + 0.5 * x


def _params(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": 0.5 * jax.random.normal(k1, (DIM, 8)),
        "b1": jnp.zeros(8),
        "w2": 0.5 * jax.random.normal(k2, (8, DIM)),
    }


def _loss_fn(name: str, sched, steps: int, remat=None, inverse: bool = False):
    """``loss(x, params, beta_end)``: a fixed projection of the final sample."""
    stochastic = "eta=1" in name or name.startswith("SDE")

    def loss(x, params, beta_end):
        schedule = jaxsched.noise_schedule(
            "scaled_linear", beta_start=SD["beta_start"], beta_end=beta_end
        )
        model = lambda x, t: tiny_model(params, x, t)  # noqa: E731
        runner = sched.inverse() if inverse else sched
        state = runner.init(steps, x.shape, x.dtype, schedule)
        kwargs = {"remat": remat}
        if stochastic:
            kwargs["noise"] = jax.random.normal(jax.random.key(7), (steps, *x.shape), x.dtype)
        if "eta=1" in name:
            kwargs["eta"] = 1.0
        out = jaxsched.sample(runner, state, model, x, **kwargs)
        weights = jnp.linspace(-1.0, 1.0, out.size, dtype=out.dtype).reshape(out.shape)
        return jnp.sum(weights * out)

    return loss


def _directional_fd(loss, args, argnum, direction, eps=1e-6):
    def shifted(sign):
        moved = list(args)
        moved[argnum] = jax.tree.map(lambda a, d: a + sign * eps * d, args[argnum], direction)
        return loss(*moved)

    return (shifted(1.0) - shifted(-1.0)) / (2.0 * eps)


GRADIENT_CASES = [(name, False) for name in SCHEDULERS] + [
    (name, True) for name in ("DDIM", "DPM++ 2M", "DPM++ 3M karras", "DEIS 2")
]  # inversion is deterministic: the stochastic variants have no inverse


@pytest.mark.parametrize(("name", "inverse"), GRADIENT_CASES)
def test_gradients_match_finite_differences(name, inverse):
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (3, DIM), jnp.float64)
        args = (x, _params(jax.random.key(0)), jnp.float64(BETA_END))
        loss = jax.jit(_loss_fn(name, SCHEDULERS[name], 10, inverse=inverse))
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
        for argnum, grad in enumerate(grads):
            key = jax.random.key(argnum + 3)
            direction = jax.tree.map(
                lambda a, key=key: jax.random.normal(key, jnp.shape(a), a.dtype), args[argnum]
            )
            leaves = jax.tree.leaves(grad)
            assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
            analytic = sum(
                jnp.vdot(g, d) for g, d in zip(leaves, jax.tree.leaves(direction), strict=True)
            )
            numeric = _directional_fd(loss, args, argnum, direction)
            np.testing.assert_allclose(analytic, numeric, rtol=2e-6, err_msg=f"argument {argnum}")


@pytest.mark.parametrize(
    ("name", "steps"), [("DDIM", 3), ("DDIM", 17), ("DPM++ 3M karras", 10), ("SDE-DPM++ 2M", 17)]
)
def test_remat_gives_the_same_value_and_gradient(name, steps):
    """3 steps: too few to segment; 10: three segments of 3 and one step left over; 17: four
    segments of 4 and one left over."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (3, DIM), jnp.float64)
        args = (x, _params(jax.random.key(0)), jnp.float64(BETA_END))
        results = {
            remat: jax.jit(
                jax.value_and_grad(_loss_fn(name, SCHEDULERS[name], steps, remat), (0, 1))
            )(*args)
            for remat in jaxsched.loops.REMAT_POLICIES
        }
    for remat in ("step", "sqrt"):
        chex.assert_trees_all_close(results[remat], results[None], rtol=1e-12, atol=1e-14)


def _backward_temporaries(sched, steps: int, remat) -> float:
    """Bytes of temporaries XLA allocates for the gradient of a ``steps``-step loop whose model
    has 512-wide hidden activations (so what the backward pass keeps shows)."""
    x = jnp.zeros((64, 64))
    params = {"w1": jnp.zeros((64, 512)), "b1": jnp.zeros(512), "w2": jnp.zeros((512, 64))}
    state = sched.init(steps, x.shape)

    def loss(params, x):
        model = lambda x, t: tiny_model(params, x, t)  # noqa: E731
        return jnp.sum(jaxsched.sample(sched, state, model, x, remat=remat) ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", ["DDIM", "DPM++ 2M"])
def test_remat_bounds_backward_memory(name):
    """Measured (MB at 10 -> 100 steps): without remat 3.5 -> 32 (DDIM) and 5.9 -> 29 (2M);
    ``"step"`` 0.6 -> 2.3 and 1.7 -> 3.2; ``"sqrt"`` 1.1 -> 1.1 and 1.4 -> 2.4."""
    sched = SCHEDULERS[name]
    plain = [_backward_temporaries(sched, n, None) for n in (10, 100)]
    sqrt = [_backward_temporaries(sched, n, "sqrt") for n in (10, 100)]
    step = _backward_temporaries(sched, 100, "step")
    assert plain[1] > 4 * plain[0], plain  # every step's activations are kept
    assert sqrt[1] < 2.5 * sqrt[0], sqrt
    assert sqrt[1] < plain[1] / 8 and step < plain[1] / 8, (plain, sqrt, step)


def test_unknown_remat_policy_is_rejected():
    sched = SCHEDULERS["DDIM"]
    x = jnp.zeros((2, DIM))
    with pytest.raises(ValueError, match="remat must be one of"):
        jaxsched.sample(sched, sched.init(5, x.shape), lambda x, t: x, x, remat="binomial")
