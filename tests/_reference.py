"""Running diffusers and jaxsched side by side, step by step, on the same inputs."""

from __future__ import annotations

import functools
import inspect
import math
import warnings

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import torch
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

import jaxsched
from jaxsched.analytic import epsilon_model, random_mixture, velocity_model

SHAPE = (2, 3, 4, 4)
DATA_STD = 0.6


def reference_scheduler(cls_name: str, config: dict, num_inference_steps: int, float64: bool):
    """A diffusers scheduler with ``set_timesteps`` done.

    With ``float64`` its tables are rebuilt in float64 from the same formulas (diffusers builds
    them in float32), so the comparison isolates the update arithmetic.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, cls_name)(**config)
    ref.set_timesteps(num_inference_steps)
    if float64:
        betas = _float64_betas(ref.config)
        ref.betas = betas
        ref.alphas = 1.0 - betas
        ref.alphas_cumprod = torch.cumprod(ref.alphas, 0)
        boundary = 1.0 if ref.config.set_alpha_to_one else ref.alphas_cumprod[0]
        boundary = torch.as_tensor(boundary, dtype=torch.float64)
        if cls_name == "DDIMInverseScheduler":
            ref.initial_alpha_cumprod = boundary
        else:
            ref.final_alpha_cumprod = boundary
    return ref


def _float64_betas(config) -> torch.Tensor:
    t = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = torch.tensor(config.trained_betas, dtype=torch.float64)
    elif config.beta_schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, t, dtype=torch.float64)
    elif config.beta_schedule == "scaled_linear":
        lo, hi = config.beta_start**0.5, config.beta_end**0.5
        betas = torch.linspace(lo, hi, t, dtype=torch.float64) ** 2
    else:

        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - abar((i + 1) / t) / abar(i / t), 0.999) for i in range(t)],
            dtype=torch.float64,
        )
    if config.rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def model_output(prediction_type: str, x: np.ndarray, abar: float, perturbation: np.ndarray):
    """A plausible model: the exact prediction for N(0, DATA_STD^2) data, plus a perturbation
    (so clipping, thresholding and error growth are exercised), in ``prediction_type`` form."""
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    var = abar * DATA_STD**2 + (1.0 - abar)
    eps = sigma * x / var + perturbation
    x0 = alpha * DATA_STD**2 * x / var - perturbation
    out = {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - sigma * x0}
    return out[prediction_type].astype(x.dtype)


def run_side_by_side(
    cls_name: str,
    config: dict,
    num_inference_steps: int,
    *,
    float64: bool,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
    seed: int = 0,
    steps: int | None = None,
):
    """Yield ``(i, ours_x, ref_x, ours_x0, ref_x0)`` after each step, as NumPy arrays.

    jaxsched runs ``jax.jit(sched.step)`` built with ``from_config(ref.config)``; both sides
    get the same starting sample, perturbations and variance noise, and each feeds the model
    its own trajectory. ``steps`` limits how many steps run (default: all of jaxsched's).
    """
    np_dtype = np.float64 if float64 else np.float32
    ref = reference_scheduler(cls_name, config, num_inference_steps, float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = jaxsched.from_config(dict(ref.config), cls=cls_name)
    dtype = jnp.float64 if float64 else jnp.float32
    state = sched.init(num_inference_steps, SHAPE, dtype)
    n = state.num_inference_steps if steps is None else steps
    rng = np.random.default_rng(seed)
    x_start = rng.standard_normal(SHAPE).astype(np_dtype)
    if cls_name == "DDIMInverseScheduler":
        x_start = (DATA_STD * x_start).astype(np_dtype)
    x_ref, x_ours = torch.from_numpy(x_start.copy()), jnp.asarray(x_start)
    abar_ref, abar_ours = ref.alphas_cumprod.numpy(), np.asarray(state.schedule.alphas_cumprod)
    stochastic = (
        {}
        if cls_name == "DDIMInverseScheduler"
        else {"eta": eta, "use_clipped_model_output": use_clipped_model_output}
    )
    step = jax.jit(functools.partial(sched.step, **stochastic))
    pred = ref.config.prediction_type
    for i in range(n):
        t = int(ref.timesteps[i])
        perturbation = 0.1 * rng.standard_normal(SHAPE).astype(np_dtype)
        z = rng.standard_normal(SHAPE).astype(np_dtype)
        out_ref = ref.step(
            torch.from_numpy(model_output(pred, x_ref.numpy(), abar_ref[t], perturbation)),
            t,
            x_ref,
            **stochastic,
            **({"variance_noise": torch.from_numpy(z)} if eta else {}),
        )
        m = model_output(pred, np.asarray(x_ours), abar_ours[t], perturbation)
        state, x_ours = step(state, m, state.timesteps[i], x_ours, **({"noise": z} if eta else {}))
        x_ref = out_ref.prev_sample
        yield (
            i,
            np.asarray(x_ours),
            x_ref.numpy(),
            np.asarray(state.pred_original_sample),
            out_ref.pred_original_sample.numpy(),
        )


def run_multistep_side_by_side(
    config: dict,
    num_inference_steps: int,
    *,
    cls_name: str,
    float64: bool = False,
    seed: int = 0,
    steps: int | None = None,
    begin_index: bool = False,
    grid: dict | None = None,
) -> list[tuple]:
    """``(i, ours_x, ref_x, ours_m, ref_m, alpha)`` after each step of a multistep scheduler
    (DPM-Solver or DEIS): the samples and the converted model outputs (the solver's x0 or eps;
    ``None`` for a first-order noise-form solver, which keeps no history) as NumPy, and the
    signal scale ``alpha`` of the level the step started from.

    Both get the same start, perturbations and SDE noise; each feeds the model its own sample.
    diffusers runs its updates in float32 whatever the sample dtype; with ``float64`` it gets
    jaxsched's float64 sigma grid (same timesteps, the grid built from float64 betas) and
    float64 inputs, so its update formulas run in float64 and the comparison isolates them.
    ``grid`` replaces ``num_inference_steps`` by ``set_timesteps`` / ``init`` arguments (custom
    ``sigmas``, ``mu``; ``num_inference_steps`` among them where it is used).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, cls_name)(**config)
        grid = {"num_inference_steps": num_inference_steps} if grid is None else grid
        ref.set_timesteps(**grid)
        if begin_index:  # count steps instead of looking repeated timesteps up
            ref.set_begin_index(0)
        sched = jaxsched.from_config(dict(ref.config), cls=cls_name)
    np_dtype = np.float64 if float64 else np.float32
    with jax.enable_x64(float64):
        return list(_run_multistep(ref, sched, grid, np_dtype, seed, steps))


def _run_multistep(ref, sched, grid, np_dtype, seed, steps):
    init_grid = dict(grid)
    num_inference_steps = init_grid.pop("num_inference_steps", None)
    state = sched.init(num_inference_steps, SHAPE, np_dtype, **init_grid)
    n = len(state.timesteps)
    ours_t, ref_t = np.asarray(state.timesteps), ref.timesteps.numpy()[:n]
    abar = ref.alphas_cumprod.numpy()
    if np_dtype == np.float32:
        np.testing.assert_array_equal(ours_t, ref_t)
    else:  # a float64 grid may round a timestep the other way; both call the model at ref's t
        np.testing.assert_array_less(np.abs(ours_t - ref_t), 2)
        schedule = sched.noise_schedule()
        sigmas = sched.grid(num_inference_steps).sigmas
        ref.sigmas = torch.from_numpy(np.array(sigmas))
        abar = np.asarray(schedule.alphas_cumprod)
    rng = np.random.default_rng(seed)
    x_start = rng.standard_normal(SHAPE).astype(np_dtype)
    if "Inverse" in type(ref).__name__:
        x_start = (DATA_STD * x_start).astype(np_dtype)
    x_ref, x_ours = torch.from_numpy(x_start.copy()), jnp.asarray(x_start)
    algorithm = getattr(sched, "algorithm_type", "")  # UniPC has none
    sde = algorithm.startswith("sde")
    pred = sched.prediction_type
    step = jax.jit(sched.step)
    for i in range(n if steps is None else steps):
        t = int(ref.timesteps[i])
        perturbation = 0.1 * rng.standard_normal(SHAPE).astype(np_dtype)
        z = rng.standard_normal(SHAPE).astype(np_dtype)

        def model(x, perturbation=perturbation, t=t):
            if pred == "flow_prediction":  # v = eps - x0 for N(0, DATA_STD^2) data, roughly
                return (-0.5 * x + perturbation).astype(np_dtype)
            return model_output(pred, x, abar[t], perturbation)

        ref_out = ref.step(
            torch.from_numpy(model(x_ref.numpy())),
            ref.timesteps[i],
            x_ref,
            **({"variance_noise": torch.from_numpy(z)} if sde else {}),
        )
        state, x_ours = step(
            state,
            jnp.asarray(model(np.asarray(x_ours))),
            state.timesteps[i],
            x_ours,
            **({"noise": jnp.asarray(z)} if sde else {}),
        )
        x_ref = ref_out.prev_sample
        if state.history.outputs:
            ours_m = np.asarray(state.history.outputs[0])
        elif algorithm.endswith("++"):
            ours_m = np.asarray(state.pred_original_sample)
        else:
            ours_m = None
        alpha = float(state.coefficients.convert_alpha[i])
        yield i, np.asarray(x_ours), x_ref.numpy(), ours_m, ref.model_outputs[-1].numpy(), alpha


def assert_multistep_matches_diffusers(
    config: dict,
    num_inference_steps: int,
    tol: float,
    *,
    cls_name: str,
    float64: bool = False,
    begin_index: bool = False,
    grid: dict | None = None,
) -> None:
    """Every step's sample within ``tol`` (scaled by ``N / 50`` beyond 50 steps: rounding
    drift accumulates), and every converted output within that over ``alpha`` (``x0 = (x -
    sigma m) / alpha`` amplifies sample differences by ``1 / alpha``)."""
    checked = 0
    sample_tol = tol * max(1.0, num_inference_steps / 50)
    for i, x, x_ref, m, m_ref, alpha in run_multistep_side_by_side(
        config,
        num_inference_steps,
        cls_name=cls_name,
        float64=float64,
        begin_index=begin_index,
        grid=grid,
    ):
        assert np.isfinite(x).all()
        np.testing.assert_allclose(
            x, x_ref, rtol=sample_tol, atol=sample_tol, err_msg=f"sample, step {i}"
        )
        if m is not None:
            m_tol = sample_tol / min(abs(alpha), 1.0)
            np.testing.assert_allclose(m, m_ref, rtol=m_tol, atol=m_tol, err_msg=f"converted, {i}")
        checked += 1
    assert checked == num_inference_steps


def diffusers_update_orders(cls_name: str, config: dict, n: int, updates: tuple[str, ...]):
    """The order of the update diffusers actually calls at each step (instrumented);
    ``updates`` names its first-, second- and third-order update methods."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = getattr(diffusers, cls_name)(**config)
    ref.set_timesteps(n)
    called = []
    for order, name in enumerate(updates, start=1):
        original = getattr(ref, name)

        def record(*args, _order=order, _original=original, **kwargs):
            called.append(_order)
            return _original(*args, **kwargs)

        setattr(ref, name, record)
    x = torch.zeros(1, 1)
    stochastic = "variance_noise" in inspect.signature(ref.step).parameters
    extra = {"variance_noise": torch.zeros(1, 1)} if stochastic else {}
    for t in ref.timesteps:
        ref.step(0.1 * torch.ones(1, 1), t, x, **extra)
    return called


def round_trip_error(sched, num_inference_steps: int) -> float:
    """RMS error of inverting Gaussian-mixture samples with ``sched.inverse()`` and
    regenerating them with ``sched``, with the exact noise prediction (4 components in 8-D,
    128 points)."""
    mixture = random_mixture(jax.random.key(0), num_components=4, dim=8)
    if sched.capabilities.levels == "flow":
        model = velocity_model(mixture, sched.num_train_timesteps)
    else:
        model = epsilon_model(mixture, sched.noise_schedule())
    x0 = mixture.sample(jax.random.key(1), 128)
    latent = jaxsched.invert(sched, model, x0, num_inference_steps)
    return regeneration_error(sched, model, x0, latent, num_inference_steps)


def regeneration_error(sched, model, x0, latent, num_inference_steps: int) -> float:
    """RMS distance to ``x0`` of what ``sched`` regenerates from ``latent``."""
    back = jaxsched.sample(sched, sched.init(num_inference_steps, x0.shape), model, latent)
    return float(jnp.sqrt(jnp.mean((back - x0) ** 2)))
