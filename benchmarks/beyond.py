"""Rows for the features diffusers has no counterpart of: the backward pass's memory with and
without rematerialization, and exact against plain inversion."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jaxsched
from benchmarks.accuracy import NUM_POINTS, SCHEDULES
from jaxsched.analytic import epsilon_model, random_mixture

HIDDEN = 512


def _mlp_model(params, x, t):
    """A two-layer network with ``HIDDEN``-wide activations, epsilon-predicting."""
    hidden = jnp.tanh(x @ params["w1"] + params["b1"] + 1e-3 * t.astype(x.dtype))
    return hidden @ params["w2"]


def remat_table(steps=(10, 100)) -> list[dict]:
    """MB of temporaries of the compiled ``jax.grad`` (w.r.t. parameters and ``x_T``) of a
    sampling loop on a ``(64, 64)`` batch, for each ``remat`` policy and step count."""
    x = jnp.zeros((64, 64))
    params = {
        "w1": jnp.zeros((64, HIDDEN)),
        "b1": jnp.zeros(HIDDEN),
        "w2": jnp.zeros((HIDDEN, 64)),
    }
    rows = []
    for label, sched in (
        ("DDIM", jaxsched.DDIMScheduler()),
        ("DPM++ 2M", jaxsched.DPMSolverMultistepScheduler()),
    ):
        for remat in (None, "step", "sqrt"):
            row = {"scheduler": label, "remat": str(remat)}
            for n in steps:
                state = sched.init(n, x.shape)

                def loss(params, x, state=state, remat=remat, sched=sched):
                    model = lambda x, t: _mlp_model(params, x, t)  # noqa: E731
                    out = jaxsched.sample(sched, state, model, x, remat=remat)
                    return jnp.sum(out**2)

                compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
                row[f"mb_{n}_steps"] = compiled.memory_analysis().temp_size_in_bytes / 1e6
            rows.append(row)
    return rows


def exact_inversion_table(seed: int = 0) -> list[dict]:
    """Round-trip RMS error (invert, regenerate with DDIM) on the Gaussian mixture, SD
    schedule: plain DDIM inversion against exact inversion with 4 and 8 model calls per step."""
    schedule = SCHEDULES["SD"]
    mixture = random_mixture(jax.random.key(seed), num_components=8, dim=64)
    x0 = mixture.sample(jax.random.key(seed + 2), NUM_POINTS)
    sched = jaxsched.DDIMScheduler(**schedule, clip_sample=False)
    model = epsilon_model(mixture, sched.noise_schedule())

    def round_trip(latent, n):
        back = jaxsched.sample(sched, sched.init(n, x0.shape), model, latent)
        return float(jnp.sqrt(jnp.mean((back - x0) ** 2)))

    rows = []
    for n in (10, 25, 50):
        row = {"steps": n, "plain": round_trip(jaxsched.invert(sched, model, x0, n), n)}
        for k in (4, 8):
            latent = jax.jit(
                lambda x, n=n, k=k: jaxsched.exact_invert(sched, model, x, n, iterations=k)
            )(x0)
            row[f"exact_{k}_calls"] = round_trip(latent, n)
        row["ratio_8_calls"] = row["plain"] / row["exact_8_calls"]
        rows.append(row)
    return rows
