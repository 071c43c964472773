"""Accuracy on an exact problem, jaxsched and diffusers side by side.

Data: a Gaussian mixture (K = 8 components in D = 64) whose noise prediction E[eps | x_t] is
closed-form (:mod:`jaxsched.analytic`), so the model is exact and every error is the solver's.
Ground truth: the probability-flow ODE in lambda = log(alpha / sigma), dx/dlambda = -alpha^2 x
+ alpha E[x0 | x] (DPM-Solver++, eq. 4), solved by scipy's DOP853 at tolerance 1e-10. Grids
that end at the data (sigma = 0, lambda = inf) are integrated to lambda = 12 (sigma = 6e-6) and
finished with the exact posterior mean E[x0 | x] there, whose difference from the ODE limit is
O(sigma^2).

Every grid here is diffusers' ``trailing`` spacing, so all runs start at t = 999 and the model is
called at the integer timesteps whose levels are the grid's own (no rounding error).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

import jaxsched
from jaxsched.analytic import (
    optimal_epsilon,
    posterior_mean,
    probability_flow,
    random_mixture,
    sample_at_grid_levels,
)

NFES = (5, 8, 10, 15, 20, 25, 50, 100, 200)
SCHEDULES = {
    "SD": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
}
DATA_END_LAMBDA = 12.0
NUM_POINTS = 32


def _solvers(end: str) -> list[tuple[str, str, dict]]:
    """``(label, class name, options)`` of every deterministic solver and order that can end
    at ``end`` ("data" or "sigma_min")."""
    data = end == "data"
    trailing = {"timestep_spacing": "trailing"}
    final = {"final_sigmas_type": "zero" if data else "sigma_min"}
    rows = [("DDIM", "DDIMScheduler", {**trailing, "clip_sample": False, "set_alpha_to_one": data})]
    rows += [
        (f"DPM++ {k}M", "DPMSolverMultistepScheduler", {**trailing, **final, "solver_order": k})
        for k in (1, 2, 3)
    ]
    if not data:  # the noise-form and DEIS solvers end at sigma_min
        rows += [
            (
                f"DPM {k}M",
                "DPMSolverMultistepScheduler",
                {**trailing, **final, "solver_order": k, "algorithm_type": "dpmsolver"},
            )
            for k in (2, 3)
        ]
        rows += [
            (f"DEIS {k}", "DEISMultistepScheduler", {**trailing, "solver_order": k})
            for k in (1, 2, 3)
        ]
    return rows


def _training_levels(schedule: dict) -> np.ndarray:
    """``alphas_cumprod`` of a schedule given as diffusers options."""
    options = dict(schedule)
    return np.asarray(
        jaxsched.noise_schedule(options.pop("beta_schedule"), **options).alphas_cumprod
    )


def _lambda(abar: float) -> float:
    return 0.5 * np.log(abar / (1.0 - abar))


def exact_flow(mixture, x_start: np.ndarray, abar_start: float, abar_end: float | None):
    """The ODE solution from level ``abar_start`` to ``abar_end`` (``None``: the data, reached
    through lambda = 12 and the exact posterior mean there)."""
    lam_end = DATA_END_LAMBDA if abar_end is None else _lambda(abar_end)
    end = probability_flow(mixture, x_start, _lambda(abar_start), lam_end, tol=1e-10)
    if abar_end is not None:
        return end
    with jax.enable_x64(True):
        abar = 1.0 / (1.0 + np.exp(-2.0 * lam_end))
        return np.asarray(posterior_mean(mixture, jnp.asarray(end), abar))


def _model(mixture32, abar: np.ndarray):
    levels = jnp.asarray(abar, jnp.float32)

    def model_fn(x, t):
        return optimal_epsilon(mixture32, x, levels[t])

    return model_fn


def jaxsched_run(cls_name: str, options: dict, schedule: dict, n: int, mixture32, x_T):
    sched = getattr(jaxsched, cls_name)(**schedule, **options)
    abar = np.asarray(sched.noise_schedule().alphas_cumprod)
    model = _model(mixture32, abar)
    return np.asarray(jaxsched.sample(sched, sched.init(n, x_T.shape), model, jnp.asarray(x_T)))


def diffusers_run(cls_name: str, options: dict, schedule: dict, n: int, mixture32, x_T):
    import diffusers
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = getattr(diffusers, cls_name)(**schedule, **options)
        sched.set_timesteps(n)
    assert len(sched.timesteps) == n
    abar = sched.alphas_cumprod.numpy()
    x = torch.from_numpy(np.array(x_T))
    for t in sched.timesteps:
        eps = np.array(optimal_epsilon(mixture32, jnp.asarray(x.numpy()), abar[int(t)]))
        x = sched.step(torch.from_numpy(eps), t, x).prev_sample
    return x.numpy()


def fitted_order(nfes, errors) -> float:
    """``-slope`` of log error against log NFE over NFE >= 20 (the asymptotic range)."""
    keep = [(n, e) for n, e in zip(nfes, errors, strict=True) if n >= 20 and e > 0]
    logs = np.log(np.array(keep))
    return float(-np.polyfit(logs[:, 0], logs[:, 1], 1)[0])


def error_table(schedule_name: str, end: str, seed: int = 0) -> list[dict]:
    """RMS error against the exact flow for every solver, NFE and library."""
    schedule = SCHEDULES[schedule_name]
    with jax.enable_x64(True):
        mixture = random_mixture(jax.random.key(seed), num_components=8, dim=64)
        abar = _training_levels(schedule).astype(np.float64)
        x_T = np.asarray(jax.random.normal(jax.random.key(seed + 1), (NUM_POINTS, 64)))
    mixture32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), mixture)
    exact = exact_flow(mixture, x_T, abar[-1], None if end == "data" else abar[0])
    x_T = x_T.astype(np.float32)
    rows = []
    for label, cls_name, options in _solvers(end):
        for library, run in (("jaxsched", jaxsched_run), ("diffusers", diffusers_run)):
            errors = []
            for n in NFES:
                out = run(cls_name, options, schedule, n, mixture32, x_T)
                errors.append(float(np.sqrt(np.mean((out.astype(np.float64) - exact) ** 2))))
            rows.append(
                {
                    "schedule": schedule_name,
                    "end": end,
                    "solver": label,
                    "library": library,
                    "nfe": list(NFES),
                    "rms_error": errors,
                    "fitted_order": fitted_order(NFES, errors),
                }
            )
    return rows


CLEAN_NFES = (10, 15, 20, 25, 50, 100, 200)


def _clean_solvers() -> list[tuple[str, object]]:
    """``(label, scheduler)`` on grids uniform in the solver's own variable, every step moving:
    log-SNR-uniform (``use_lu_lambdas``) for DPM-Solver, log-sigma-uniform exponential sigmas
    without the repeated last sigma for DEIS; all end at sigma_min."""
    lu = {"use_lu_lambdas": True, "final_sigmas_type": "sigma_min"}
    rows = [
        (f"DPM++ {k}M", jaxsched.DPMSolverMultistepScheduler(**lu, solver_order=k))
        for k in (1, 2, 3)
    ]
    rows.append(
        (
            "DPM++ 3M exact",
            jaxsched.DPMSolverMultistepScheduler(**lu, solver_order=3, exact_third_order=True),
        )
    )
    rows += [
        (
            f"DPM {k}M",
            jaxsched.DPMSolverMultistepScheduler(**lu, solver_order=k, algorithm_type="dpmsolver"),
        )
        for k in (2, 3)
    ]
    exponential = {"use_exponential_sigmas": True, "repeat_final_sigma": False}
    rows += [
        (f"DEIS {k}", jaxsched.DEISMultistepScheduler(**exponential, solver_order=k))
        for k in (1, 2, 3)
    ]
    return rows


def clean_order_table(seed: int = 0) -> list[dict]:
    """Convergence orders where they are clean: float64, the exact model at each grid level
    (:func:`jaxsched.analytic.sample_at_grid_levels`), grids uniform in log-SNR (SD schedule),
    against DOP853 at 1e-10 between the grid's own ends. jaxsched only: diffusers has no way to
    call the model at a continuous level."""
    rows = []
    with jax.enable_x64(True):
        mixture = random_mixture(jax.random.key(seed), num_components=8, dim=64)
        x_T = jax.random.normal(jax.random.key(seed + 1), (NUM_POINTS, 64), jnp.float64)
        exact_between: dict[tuple[float, float], np.ndarray] = {}
        for label, sched in _clean_solvers():
            errors = []
            for n in CLEAN_NFES:
                out, sigmas = sample_at_grid_levels(sched, n, mixture, x_T)
                ends = (-float(np.log(sigmas[0])), -float(np.log(sigmas[-1])))
                if ends not in exact_between:
                    exact_between[ends] = probability_flow(mixture, x_T, *ends, tol=1e-10)
                diff = np.asarray(out) - exact_between[ends]
                errors.append(float(np.sqrt(np.mean(diff**2))))
            rows.append(
                {
                    "schedule": "SD, log-SNR-uniform grid, exact levels (float64)",
                    "end": "sigma_min",
                    "solver": label,
                    "library": "jaxsched",
                    "nfe": list(CLEAN_NFES),
                    "rms_error": errors,
                    "fitted_order": fitted_order(CLEAN_NFES, errors),
                }
            )
    return rows


INVERSE_PATHS = (
    ("DDIM", "DDIMScheduler", {"clip_sample": False}, "DDIMInverseScheduler"),
    (
        "DPM++ 2M",
        "DPMSolverMultistepScheduler",
        {"final_sigmas_type": "sigma_min"},
        "DPMSolverMultistepInverseScheduler",
    ),
    ("DEIS 2", "DEISMultistepScheduler", {}, None),
)


def round_trip_table(schedule_name: str = "SD", seed: int = 0) -> list[dict]:
    """Invert mixture samples, regenerate, RMS error at 10 / 25 / 50 steps (diffusers too where
    it has the inverse)."""
    import diffusers
    import torch

    schedule = SCHEDULES[schedule_name]
    mixture = random_mixture(jax.random.key(seed), num_components=8, dim=64)
    x0 = np.asarray(mixture.sample(jax.random.key(seed + 2), NUM_POINTS))
    model = _model(mixture, _training_levels(schedule))
    rows = []
    for label, cls_name, options, inverse_name in INVERSE_PATHS:
        for n in (10, 25, 50):
            sched = getattr(jaxsched, cls_name)(**schedule, **options)
            latent = jaxsched.invert(sched, model, jnp.asarray(x0), n)
            back = jaxsched.sample(sched, sched.init(n, x0.shape), model, latent)
            row = {
                "path": label,
                "steps": n,
                "jaxsched": float(np.sqrt(np.mean((np.asarray(back) - x0) ** 2))),
            }
            if inverse_name is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fwd = getattr(diffusers, cls_name)(**schedule, **options)
                    inv = getattr(diffusers, inverse_name).from_config(fwd.config)
                x = torch.from_numpy(x0.copy())
                for direction in (inv, fwd):
                    direction.set_timesteps(n)
                    for t in direction.timesteps:
                        eps = np.array(model(jnp.asarray(x.numpy()), int(t)))
                        x = direction.step(torch.from_numpy(eps), t, x).prev_sample
                row["diffusers"] = float(np.sqrt(np.mean((x.numpy() - x0) ** 2)))
            rows.append(row)
    return rows
