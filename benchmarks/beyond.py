"""Rows for the features diffusers has no counterpart of: the backward pass's memory with and
without rematerialization, exact against plain inversion, and learned sampling grids."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

import jaxsched
from benchmarks.accuracy import NUM_POINTS, SCHEDULES
from jaxsched import learned_grid
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
    schedule: plain DDIM inversion against exact inversion (plain fixed-point iteration and
    Anderson-accelerated) with 4 and 8 model calls per step."""
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
        for acceleration in (None, "anderson"):
            for k in (4, 8):
                latent = jax.jit(
                    lambda x, n=n, k=k, a=acceleration: jaxsched.exact_invert(
                        sched, model, x, n, iterations=k, acceleration=a
                    )
                )(x0)
                row[f"{acceleration or 'fixed_point'}_{k}_calls"] = round_trip(latent, n)
        row["ratio_anderson_8"] = row["plain"] / row["anderson_8_calls"]
        rows.append(row)
    return rows


def _grid_baselines(sched) -> dict[str, jaxsched.Scheduler]:
    """The built-in grids a learned one competes with: every timestep spacing, and the sigma
    spacings where the scheduler has them."""
    variants = {spacing: {"timestep_spacing": spacing} for spacing in ("linspace", "trailing")}
    if isinstance(sched, jaxsched.DDIMScheduler):
        variants["leading"] = {"timestep_spacing": "leading"}
    else:
        variants["karras"] = {"use_karras_sigmas": True}
        variants["exponential"] = {"use_exponential_sigmas": True}
    return {name: sched.replace(**options) for name, options in variants.items()}


def learned_grid_table(seed: int = 0, iterations: int = 300) -> list[dict]:
    """RMS error to a high-NFE solution (DPM++ 3M, 1000 log-uniform steps) on the Gaussian
    mixture, SD schedule, float64: the built-in grids against a grid learned on 64 other
    starting points (:func:`jaxsched.learned_grid.learn_sigmas`, ``iterations`` Adam steps)."""
    cases = (
        ("DPM++ 2M", jaxsched.DPMSolverMultistepScheduler, (5, 10, 20)),
        (
            "DPM++ 3M",
            lambda **kw: jaxsched.DPMSolverMultistepScheduler(**kw, solver_order=3),
            (10,),
        ),
        ("DEIS 2", jaxsched.DEISMultistepScheduler, (10,)),
        ("DDIM", lambda **kw: jaxsched.DDIMScheduler(**kw, clip_sample=False), (10,)),
    )
    rows = []
    with jax.enable_x64(True):
        mixture = random_mixture(jax.random.key(seed), num_components=8, dim=64)
        x_fit = jax.random.normal(jax.random.key(seed + 1), (64, 64))
        x_eval = jax.random.normal(jax.random.key(seed + 2), (256, 64))
        for label, make, step_counts in cases:
            sched = make(**SCHEDULES["SD"])
            model = epsilon_model(mixture, sched.noise_schedule())
            ends = learned_grid.grid_ends(sched)
            exact = learned_grid.sample_on_grid(
                jaxsched.DPMSolverMultistepScheduler(**SCHEDULES["SD"], solver_order=3),
                model,
                learned_grid.log_uniform_sigmas(1000, ends),
                x_eval,
            )

            def error(out, exact=exact):
                return float(jnp.sqrt(jnp.mean((out - exact) ** 2)))

            for n in step_counts:
                row = {"scheduler": label, "steps": n}
                for name, variant in _grid_baselines(sched).items():
                    state = variant.init(n, x_eval.shape)
                    row[name] = error(jaxsched.sample(variant, state, model, x_eval))
                start = time.perf_counter()
                fit = learned_grid.learn_sigmas(sched, model, n, x_fit, iterations=iterations)
                row["fit_s"] = time.perf_counter() - start
                row["learned"] = error(
                    learned_grid.sample_on_grid(sched, model, fit.sigmas, x_eval)
                )
                best = min(
                    v for k, v in row.items() if k not in ("scheduler", "steps", "fit_s", "learned")
                )
                row["best_builtin_over_learned"] = best / row["learned"]
                rows.append(row)
    return rows
