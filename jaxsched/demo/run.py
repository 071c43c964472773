"""The demo run: sample digits with every forward scheduler, invert held-out digits with every
inverse scheduler and regenerate them, for both shipped denoisers (noise prediction on the VP
schedule; velocity on the rectified-flow path); write pictures and metrics, print a table."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxsched
from jaxsched.demo.denoiser import FLOW_WEIGHTS, IMAGE_SHAPE, WEIGHTS, load_params, model_fn
from jaxsched.demo.digits import load_digits, to_pixels

#: The samplers the demo runs (label, scheduler); each has the denoiser's training schedule.
SAMPLERS = (
    ("DDIM", jaxsched.DDIMScheduler()),
    ("DPM-Solver++ 2M", jaxsched.DPMSolverMultistepScheduler()),
    ("DEIS 2", jaxsched.DEISMultistepScheduler()),
    ("UniPC 2", jaxsched.UniPCMultistepScheduler()),
)
#: How the held-out digits are inverted: ``(label, forward scheduler, method)``, the method
#: its ``inverse()`` run or :func:`jaxsched.exact_invert` (one-step schedulers).
INVERTED = (
    ("DDIMInverse", jaxsched.DDIMScheduler(clip_sample=False), "inverse"),
    ("DDIM exact_invert", jaxsched.DDIMScheduler(clip_sample=False), "exact_invert"),
    ("DPMSolverMultistepInverse", jaxsched.DPMSolverMultistepScheduler(), "inverse"),
    ("DEISMultistepInverse", jaxsched.DEISMultistepScheduler(), "inverse"),
    ("UniPCMultistepInverse", jaxsched.UniPCMultistepScheduler(), "inverse"),
)
EXACT_ITERATIONS = 8
_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
#: The samplers of the flow-matching denoiser (trained at shift 1, the default).
FLOW_SAMPLERS = (
    ("Flow Euler", jaxsched.FlowMatchEulerDiscreteScheduler()),
    ("Flow Heun", jaxsched.FlowMatchHeunDiscreteScheduler()),
    ("DPM-Solver++ 2M, flow", jaxsched.DPMSolverMultistepScheduler(**_FLOW)),
    ("UniPC 2, flow (Wan's)", jaxsched.UniPCMultistepScheduler(**_FLOW)),
)
#: How the held-out digits are inverted with the flow denoiser (as :data:`INVERTED`).
FLOW_INVERTED = (
    ("FlowMatchEulerInverse", jaxsched.FlowMatchEulerDiscreteScheduler(), "inverse"),
    ("Flow Euler exact_invert", jaxsched.FlowMatchEulerDiscreteScheduler(), "exact_invert"),
)
SCALE = 4  # pixels per digit pixel in the pictures
LABEL_WIDTH = 250


def _timed(run, *args, repeats: int) -> tuple[jax.Array, float]:
    """``run(*args)`` after one compiling call, and the median wall time of ``repeats`` more
    (milliseconds)."""
    out = jax.block_until_ready(run(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(*args))
        times.append(1e3 * (time.perf_counter() - start))
    return out, statistics.median(times)


def _rms(a, b) -> float:
    return float(jnp.sqrt(jnp.mean((jnp.asarray(a) - jnp.asarray(b)) ** 2)))


def nearest_distance(images, reference) -> float:
    """Mean over ``images`` of the RMS pixel distance to the nearest ``reference`` image."""
    a = jnp.asarray(images).reshape(len(images), -1)
    b = jnp.asarray(reference).reshape(len(reference), -1)
    squared = jnp.sum(a**2, 1)[:, None] - 2 * a @ b.T + jnp.sum(b**2, 1)[None]
    return float(jnp.mean(jnp.sqrt(jnp.maximum(squared.min(1), 0.0) / a.shape[1])))


def sample_rows(samplers, kind, model, train, noise, step_counts, repeats):
    """One row per ``(label, scheduler)`` of ``samplers`` and step count, with the samples;
    ``kind`` names the denoiser (``"epsilon"`` or ``"flow"``)."""
    rows, pictures = [], []
    for label, sched in samplers:
        for n in step_counts:
            state = sched.init(n, noise.shape)
            run = jax.jit(lambda x, s=sched, st=state: jaxsched.sample(s, st, model, x))
            samples, ms = _timed(run, noise, repeats=repeats)
            rows.append(
                {
                    "scheduler": label,
                    "model": kind,
                    "steps": n,
                    "model_calls": len(state.timesteps),
                    "ms": ms,
                    "nearest_train_distance": nearest_distance(samples, train),
                }
            )
            pictures.append((f"{label}, {n}", samples))
    return rows, pictures


def _inverter(sched, method: str, model, n: int, shape):
    """``(x0 -> latent, model calls)``: ``sched.inverse()``'s run, or :func:`exact_invert` of
    ``sched`` with :data:`EXACT_ITERATIONS` fixed-point iterations per step."""
    if method == "exact_invert":
        return (
            lambda x0: jaxsched.exact_invert(sched, model, x0, n, iterations=EXACT_ITERATIONS),
            n * EXACT_ITERATIONS,
        )
    inverse = sched.inverse()
    state = inverse.init(n, shape)
    return lambda x0: jaxsched.sample(inverse, state, model, x0), len(state.timesteps)


def inversion_rows(inverted, kind, model, originals, step_counts, repeats):
    """One row per ``(label, forward scheduler, method)`` of ``inverted`` and step count:
    invert (with ``inverse()`` or ``exact_invert``), regenerate, compare."""
    rows, pictures = [], []
    for label, sched, method in inverted:
        for n in step_counts:
            invert, inverse_calls = _inverter(sched, method, model, n, originals.shape)
            fwd_state = sched.init(n, originals.shape)

            def round_trip(x0, s=sched, invert=invert, fs=fwd_state):
                latent = invert(x0)
                return latent, jaxsched.sample(s, fs, model, latent)

            (latents, rebuilt), ms = _timed(jax.jit(round_trip), originals, repeats=repeats)
            rows.append(
                {
                    "scheduler": label,
                    "model": kind,
                    "steps": n,
                    "model_calls": inverse_calls + len(fwd_state.timesteps),
                    "ms": ms,
                    "reconstruction_rms": _rms(rebuilt, originals),
                    "latent_std": float(jnp.std(latents)),
                }
            )
            pictures.append((f"{label}, {n}", latents, rebuilt))
    return rows, pictures


def img2img(sched, model, originals, steps: int, strength: float, key):
    """``(noised, edited)``: ``originals`` noised to the level ``strength`` of the way to pure
    noise (``add_noise``, the flow forward process for a flow scheduler), then denoised over the
    last steps of an ``steps``-step run (``begin_index``), as diffusers' img2img pipelines do."""
    begin = jaxsched.begin_index_for_strength(sched, steps, strength)
    state = sched.init(steps, originals.shape, begin_index=begin)
    noise = jax.random.normal(key, originals.shape)
    noisy = sched.add_noise(state, originals, noise, state.timesteps[begin])
    return noisy, jaxsched.sample(sched, state, model, noisy)


def trajectory_rows(model, flow_model, noise, originals, steps: int = 25, strength: float = 0.5):
    """Pictures of two workflows: the x0 prediction of every step of a DPM-Solver++ 2M run
    (``return_trajectory``, with a progress bar), and img2img edits of held-out digits at
    ``strength`` with each denoiser (DPM-Solver++ 2M; flow-matching Euler), the originals
    above them."""
    from jaxsched.loops import tqdm_progress

    sched = jaxsched.DPMSolverMultistepScheduler()
    starts = noise[:4]
    _, trajectory = jaxsched.sample(
        sched,
        sched.init(steps, starts.shape),
        model,
        starts,
        return_trajectory=True,
        progress=tqdm_progress(desc=f"trajectory (DPM-Solver++ 2M, {steps} steps)", leave=False),
    )
    rows = [
        (f"sample {i}: x0 at each step", to_pixels(trajectory.pred_original_samples[:, i]))
        for i in range(len(starts))
    ]
    rows.append(("img2img: original", to_pixels(originals)))
    edits = (("epsilon", sched, model), ("flow", FLOW_SAMPLERS[0][1], flow_model))
    for kind, edit_sched, denoiser in edits:
        noisy, edited = img2img(edit_sched, denoiser, originals, steps, strength, jax.random.key(1))
        rows += [
            (f"  {kind}, strength {strength}: noised", to_pixels(noisy)),
            (f"  {kind}: edited", to_pixels(edited)),
        ]
    return rows


def _grid_image(rows: Sequence[tuple[str, np.ndarray]]):
    """A labelled picture: one row of digits per ``(label, uint8 images (k, 8, 8))``."""
    from PIL import Image, ImageDraw

    height, width = IMAGE_SHAPE[0] * SCALE, IMAGE_SHAPE[1] * SCALE
    columns = max(len(images) for _, images in rows)
    canvas = Image.new("L", (LABEL_WIDTH + columns * (width + 2), len(rows) * (height + 2)), 255)
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        top = r * (height + 2)
        draw.text((4, top + height // 2 - 6), label, fill=0)
        for c, image in enumerate(images):
            tile = Image.fromarray(image, "L").resize((width, height), Image.NEAREST)
            canvas.paste(tile, (LABEL_WIDTH + c * (width + 2), top))
    return canvas


def _latent_pixels(latents) -> np.ndarray:
    """Latents (about N(0, 1)) shown with ``[-3, 3]`` mapped to black..white."""
    return to_pixels(np.asarray(latents) / 3.0)


def write_pictures(out: Path, sample_pictures, originals, inversion_pictures) -> None:
    """``samples.png`` (a row per sampler and step count) and ``inversion.png`` (per inverse
    scheduler: originals, inverted latents, reconstructions)."""
    _grid_image([(label, to_pixels(x)) for label, x in sample_pictures]).save(out / "samples.png")
    rows = []
    for label, latents, rebuilt in inversion_pictures:
        rows += [
            (f"{label}: original", to_pixels(originals)),
            ("  inverted latent", _latent_pixels(latents)),
            ("  reconstruction", to_pixels(rebuilt)),
        ]
    _grid_image(rows).save(out / "inversion.png")


def run_demo(
    out: str | Path,
    *,
    weights: str | Path = WEIGHTS,
    flow_weights: str | Path = FLOW_WEIGHTS,
    step_counts: Sequence[int] = (10, 25),
    num_samples: int = 16,
    num_inverted: int = 8,
    repeats: int = 5,
    seed: int = 0,
) -> dict:
    """Run the demo into ``out`` and return its metrics (also written to ``metrics.json``).

    ``weights`` are the noise-prediction denoiser's, ``flow_weights`` the flow model's.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model_fn(load_params(weights))
    flow_model = model_fn(load_params(flow_weights))
    train, held_out = load_digits()
    noise = jax.random.normal(jax.random.key(seed), (num_samples, *IMAGE_SHAPE))
    originals = jnp.asarray(held_out.images[:num_inverted])
    samples, sample_pictures = [], []
    inversions, inversion_pictures = [], []
    for kind, denoiser, samplers, inverted in (
        ("epsilon", model, SAMPLERS, INVERTED),
        ("flow", flow_model, FLOW_SAMPLERS, FLOW_INVERTED),
    ):
        rows, pictures = sample_rows(
            samplers, kind, denoiser, train.images, noise, step_counts, repeats
        )
        samples, sample_pictures = samples + rows, sample_pictures + pictures
        rows, pictures = inversion_rows(inverted, kind, denoiser, originals, step_counts, repeats)
        inversions, inversion_pictures = inversions + rows, inversion_pictures + pictures
    metrics = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "held_out_nearest_train_distance": nearest_distance(held_out.images, train.images),
        "sampling": samples,
        "inversion": inversions,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_pictures(out, sample_pictures, originals, inversion_pictures)
    _grid_image(trajectory_rows(model, flow_model, noise, originals)).save(out / "trajectory.png")
    return metrics


def format_table(metrics: dict) -> str:
    """The printed summary: a row per scheduler and step count."""
    lines = [
        f"{'scheduler':<28}{'model':>8}{'steps':>6}{'calls':>6}{'ms (compiled)':>15}"
        f"{'reconstruction':>16}{'nearest train':>15}",
    ]
    for row in metrics["sampling"] + metrics["inversion"]:
        lead = (
            f"{row['scheduler']:<28}{row['model']:>8}{row['steps']:>6}{row['model_calls']:>6}"
            f"{row['ms']:>15.2f}"
        )
        if "reconstruction_rms" in row:
            lines.append(f"{lead}{row['reconstruction_rms']:>16.3e}{'':>15}")
        else:
            lines.append(f"{lead}{'':>16}{row['nearest_train_distance']:>15.3f}")
    lines.append(
        "model: the noise-prediction (epsilon) or the flow-matching (velocity) denoiser; calls: "
        "model calls per run.\n"
        "nearest train: mean RMS distance of a sample to its nearest training digit "
        f"(held-out real digits: {metrics['held_out_nearest_train_distance']:.3f}).\n"
        "reconstruction: RMS error of invert -> regenerate on held-out digits ([-1, 1] pixels); "
        "their ms are the round trip (inversion + regeneration)."
    )
    return "\n".join(lines)
