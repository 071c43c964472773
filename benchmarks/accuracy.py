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

The flow-matching twin (:func:`flow_error_table`): the same mixture on the rectified-flow path
``x_s = (1 - s) x0 + s eps``, the exact velocity ``E[eps - x0 | x_s]`` as the model, and the
flow ODE ``dx/ds = E[eps - x0 | x]`` solved by DOP853 at 1e-10 as ground truth.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxsched
from jaxsched.analytic import (
    flow_ode,
    optimal_epsilon,
    posterior_mean,
    probability_flow,
    random_mixture,
    sample_at_grid_levels,
    velocity_model,
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
    rows += [
        (f"UniPC {k}", "UniPCMultistepScheduler", {**trailing, **final, "solver_order": k})
        for k in (2, 3)
    ]
    if not data:
        # Only to sigma_min: at a last step to sigma = 0 diffusers' UniPC returns NaN with bh1
        # and inf without lower_order_final; the noise-form and DEIS solvers end at sigma_min.
        unipc = {**trailing, **final, "solver_order": 2}
        rows += [
            ("UniPC 2 bh1", "UniPCMultistepScheduler", {**unipc, "solver_type": "bh1"}),
            (
                "UniPC 2, lower_order_final=False",
                "UniPCMultistepScheduler",
                {**unipc, "lower_order_final": False},
            ),
        ]
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


def fitted_order(nfes, errors, from_nfe: int = 20) -> float:
    """``-slope`` of log error against log NFE over NFE >= ``from_nfe`` (the asymptotic
    range)."""
    keep = [(n, e) for n, e in zip(nfes, errors, strict=True) if n >= from_nfe and e > 0]
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


#: Model-call budgets of the flow table; Heun, whose N steps take 2N - 1 calls, runs the most
#: steps that fit (one call under each budget).
FLOW_NFES = (4, 8, 16, 32, 64, 128)
FLOW_SHIFTS = (1.0, 3.0)
FLOW_FIT_FROM = 15  # the fitted order's range: budgets 16-128 (Heun's 15-127 calls)


def _flow_solvers(shift: float) -> list[tuple[str, str, dict, int]]:
    """``(label, class name, options, model calls per step)`` of the flow samplers at one
    ``shift``: the flow-matching classes, and the multistep solvers on diffusers' flow sigmas
    with velocity (``flow_prediction``) models."""
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": shift}
    return [
        ("Flow Euler", "FlowMatchEulerDiscreteScheduler", {"shift": shift}, 1),
        ("Flow Heun", "FlowMatchHeunDiscreteScheduler", {"shift": shift}, 2),
        ("DPM++ 2M, flow sigmas", "DPMSolverMultistepScheduler", {**flow, "solver_order": 2}, 1),
        ("DEIS 2, flow sigmas", "DEISMultistepScheduler", {**flow, "solver_order": 2}, 1),
        ("UniPC 2, flow sigmas", "UniPCMultistepScheduler", {**flow, "solver_order": 2}, 1),
    ]


def steps_within(budget: int, calls_per_step: int) -> int:
    """The most steps whose model calls fit ``budget``: ``N`` steps take ``N`` calls, or
    ``2N - 1`` with two calls per step (Heun's last step is a single Euler call)."""
    return budget if calls_per_step == 1 else (budget + 1) // 2


def flow_jaxsched_run(
    cls_name: str, options: dict, n: int, model: Callable, x_T: np.ndarray
) -> np.ndarray:
    """jaxsched's ``n``-step run from ``x_T`` ``(B, D)``: the final sample."""
    sched = getattr(jaxsched, cls_name)(**options)
    return np.asarray(jaxsched.sample(sched, sched.init(n, x_T.shape), model, jnp.asarray(x_T)))


def flow_diffusers_run(
    cls_name: str, options: dict, n: int, model: Callable, x_T: np.ndarray
) -> tuple[np.ndarray, tuple[float, float]]:
    """diffusers' ``n``-step loop from ``x_T`` ``(B, D)``, the model called at each of its
    timesteps: ``(final sample, (first sigma, last sigma) of its grid)``."""
    import diffusers
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = getattr(diffusers, cls_name)(**options)
        sched.set_timesteps(n)
    x = torch.from_numpy(np.array(x_T))
    for t in sched.timesteps:
        v = np.array(model(jnp.asarray(x.numpy()), jnp.asarray(t.numpy())))
        x = sched.step(torch.from_numpy(v), t, x).prev_sample
    ends = (float(sched.sigmas[0]), float(sched.sigmas[-1]))
    return x.numpy(), ends


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


def flow_error_table(shift: float, seed: int = 0) -> list[dict]:
    """RMS error against the exact flow ODE for every flow sampler, model-call budget and
    library (the mixture of :func:`error_table`, float32 models, 32 points).

    Each run is compared with the exact solution between its own grid's ends (DOP853 at
    1e-10): the flow-matching classes walk from s = 1 to 0; the flow sigmas of DPM-Solver
    and UniPC start at ``shift(1 - 1 / T)``, and DEIS stops at its last nonzero sigma, which
    diffusers repeats as the final one. Each diffusers row also holds the largest ``|jaxsched
    - diffusers|`` of the final samples at each budget.
    """
    with jax.enable_x64(True):
        mixture = random_mixture(jax.random.key(seed), num_components=8, dim=64)
        x_T = np.asarray(jax.random.normal(jax.random.key(seed + 1), (NUM_POINTS, 64)))
    model = velocity_model(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), mixture))
    x_T32 = x_T.astype(np.float32)
    exact_between: dict[tuple[float, float], np.ndarray] = {}
    rows = []
    for label, cls_name, options, calls in _flow_solvers(shift):
        steps = [steps_within(budget, calls) for budget in FLOW_NFES]
        nfes = [calls * n - (calls - 1) for n in steps]  # N, or Heun's 2N - 1
        errors: dict[str, list[float]] = {"jaxsched": [], "diffusers": []}
        differences = []
        for n in steps:
            ours = flow_jaxsched_run(cls_name, options, n, model, x_T32)
            theirs, ends = flow_diffusers_run(cls_name, options, n, model, x_T32)
            if ends not in exact_between:
                exact_between[ends] = flow_ode(mixture, x_T, *ends, tol=1e-10)
            errors["jaxsched"].append(_rms(ours, exact_between[ends]))
            errors["diffusers"].append(_rms(theirs, exact_between[ends]))
            differences.append(float(np.max(np.abs(ours - theirs))))
        for library, errs in errors.items():
            row = {
                "schedule": f"rectified flow, shift {shift:g}",
                "end": "s = 0 (DEIS: its last sigma)",
                "solver": label,
                "library": library,
                "nfe": nfes,
                "rms_error": errs,
                "fitted_order": fitted_order(nfes, errs, from_nfe=FLOW_FIT_FROM),
            }
            if library == "diffusers":
                row["max_abs_difference"] = differences
            rows.append(row)
    return rows


CLEAN_NFES = (10, 15, 20, 25, 50, 100, 200)


def _clean_solvers() -> list[tuple[str, object]]:
    """``(label, scheduler)`` on grids uniform in the solver's own variable: log-SNR-uniform
    (``use_lu_lambdas``) for DPM-Solver, log-sigma-uniform exponential sigmas without the
    repeated last sigma for DEIS, every step moving; all end at sigma_min. UniPC (bh2 unless
    named) runs on exponential sigmas with diffusers' repeated last sigma: its last model call
    only corrects the last moving step, so N calls make N - 1 corrected steps."""
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
    unipc = {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min"}
    rows += [
        (f"UniPC {k}", jaxsched.UniPCMultistepScheduler(**unipc, solver_order=k)) for k in (1, 2, 3)
    ]
    rows.append(
        (
            "UniPC 2 bh1",
            jaxsched.UniPCMultistepScheduler(**unipc, solver_order=2, solver_type="bh1"),
        )
    )
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


#: Where the forward (regenerating) run of a multistep path ends; the inverse always starts
#: at sigma_min.
FORWARD_ENDS = ("sigma_min", "zero")

#: (label, forward class, options, diffusers' inverse class or None where it has none)
INVERSE_PATHS = (
    ("DDIM", "DDIMScheduler", {"clip_sample": False}, "DDIMInverseScheduler"),
    *(
        (
            "DPM++ 2M",
            "DPMSolverMultistepScheduler",
            {"final_sigmas_type": end},
            "DPMSolverMultistepInverseScheduler",
        )
        for end in FORWARD_ENDS
    ),
    ("DEIS 2", "DEISMultistepScheduler", {}, None),
    *(
        (
            f"UniPC {k}",
            "UniPCMultistepScheduler",
            {"final_sigmas_type": end, "solver_order": k},
            None,
        )
        for k in (1, 2, 3)
        for end in FORWARD_ENDS
    ),
)
ROUND_TRIP_STEPS = (10, 25, 50)


def diffusers_round_trip(
    cls_name: str, inverse_name: str, options: dict, schedule: dict, model, x0: np.ndarray, n: int
) -> np.ndarray:
    """diffusers' ``n``-step inversion of ``x0`` with ``inverse_name``, then its ``n``-step
    regeneration with ``cls_name``: the regenerated samples."""
    import diffusers
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forward = getattr(diffusers, cls_name)(**schedule, **options)
        inverse = getattr(diffusers, inverse_name).from_config(forward.config)
    x = torch.from_numpy(x0.copy())
    for direction in (inverse, forward):
        direction.set_timesteps(n)
        for t in direction.timesteps:
            eps = np.array(model(jnp.asarray(x.numpy()), int(t)))
            x = direction.step(torch.from_numpy(eps), t, x).prev_sample
    return x.numpy()


def exact_latent(mixture, x0: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """The exact inverse: the probability-flow ODE from ``x0`` at the inverse grid's first
    level to its last (``sigmas`` ``(N + 1,)`` ascending, ``sigma / alpha``; a first sigma of 0,
    the data, starts at lambda = 12), DOP853 at 1e-10 in float64."""
    start = DATA_END_LAMBDA if sigmas[0] == 0 else -float(np.log(sigmas[0]))
    with jax.enable_x64(True):
        mixture64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), mixture)
    return probability_flow(mixture64, x0, start, -float(np.log(sigmas[-1])), tol=1e-10)


def round_trip_table(schedule_name: str = "SD", seed: int = 0) -> list[dict]:
    """Invert mixture samples, regenerate: RMS error of the regenerated samples at 10 / 25 / 50
    steps (``N`` model calls each way), jaxsched and diffusers where it has the inverse, with
    the largest per-point RMS of jaxsched's; and the RMS error of jaxsched's latent against
    the exact inverse ODE between the inverse grid's ends (:func:`exact_latent`)."""
    schedule = SCHEDULES[schedule_name]
    mixture = random_mixture(jax.random.key(seed), num_components=8, dim=64)
    x0 = np.asarray(mixture.sample(jax.random.key(seed + 2), NUM_POINTS))
    model = _model(mixture, _training_levels(schedule))
    exact_between: dict[tuple[float, float], np.ndarray] = {}
    rows = []
    for label, cls_name, options, inverse_name in INVERSE_PATHS:
        for n in ROUND_TRIP_STEPS:
            sched = getattr(jaxsched, cls_name)(**schedule, **options)
            latent = jaxsched.invert(sched, model, jnp.asarray(x0), n)
            back = jaxsched.sample(sched, sched.init(n, x0.shape), model, latent)
            sigmas = np.asarray(sched.inverse().grid(n).sigmas, np.float64)
            ends = (float(sigmas[0]), float(sigmas[-1]))
            if ends not in exact_between:
                exact_between[ends] = exact_latent(mixture, x0, sigmas)
            per_point = np.sqrt(np.mean((np.asarray(back, np.float64) - x0) ** 2, axis=1))
            row = {
                "path": label,
                "forward_end": sched.capabilities.final_sigma,
                "steps": n,
                "jaxsched": _rms(np.asarray(back), x0),
                "jaxsched_worst_point": float(per_point.max()),
                "latent_vs_exact": _rms(np.asarray(latent), exact_between[ends]),
            }
            if inverse_name is not None:
                theirs = diffusers_round_trip(
                    cls_name, inverse_name, options, schedule, model, x0, n
                )
                row["diffusers"] = _rms(theirs, x0)
            rows.append(row)
    return rows
