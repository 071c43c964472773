"""The ``jaxsched`` command line.

- ``jaxsched demo``: two Flax denoisers trained on 8x8 digits (noise prediction and flow
  matching; weights shipped) sampled with every scheduler and inverted with every inverse
  scheduler; pictures, metrics and a table.
- ``jaxsched example``: DDIM sample + invert on an exact Gaussian-mixture model.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxsched
from jaxsched.analytic import epsilon_model, random_mixture


def run_example(step_counts: Sequence[int], num_samples: int, dim: int, seed: int) -> list[dict]:
    """Invert data to noise and regenerate it, and sample anew, for each step count.

    Returns a first row with the data's own mean distance to its nearest component mean, then
    one row per step count.
    """
    sched = jaxsched.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    k_mix, k_data, k_noise = jax.random.split(jax.random.key(seed), 3)
    mixture = random_mixture(k_mix, num_components=4, dim=dim)
    model_fn = epsilon_model(mixture, sched.noise_schedule())
    x0 = mixture.sample(k_data, num_samples)

    @jax.jit
    def round_trip(x0, state_fwd, state_inv):
        x_t = jaxsched.sample(sched.inverse(), state_inv, model_fn, x0)
        return x_t, jaxsched.sample(sched, state_fwd, model_fn, x_t)

    def mean_distance_to_nearest_mean(x):
        return float(jnp.linalg.norm(x[:, None] - mixture.means[None], axis=-1).min(1).mean())

    rows = [{"steps": 0, "data_mode_distance": mean_distance_to_nearest_mean(x0)}]
    for n in step_counts:
        state_fwd = sched.init(n, x0.shape)
        state_inv = sched.inverse().init(n, x0.shape)
        jax.block_until_ready(round_trip(x0, state_fwd, state_inv))  # compile
        start = time.perf_counter()
        x_t, x_rec = jax.block_until_ready(round_trip(x0, state_fwd, state_inv))
        seconds = time.perf_counter() - start
        x_new = jaxsched.sample(sched, state_fwd, model_fn, jax.random.normal(k_noise, x0.shape))
        rows.append(
            {
                "steps": n,
                "rms_error": float(jnp.sqrt(jnp.mean((x_rec - x0) ** 2))),
                "latent_std": float(jnp.std(x_t)),
                "mode_distance": mean_distance_to_nearest_mean(x_new),
                "ms": 1e3 * seconds,
            }
        )
    return rows


def _example(args: argparse.Namespace) -> None:
    data, *rows = run_example(args.steps, args.num_samples, args.dim, args.seed)
    print(
        f"DDIM invert -> regenerate on a {args.dim}-D Gaussian mixture ({args.num_samples} "
        f"points, exact noise prediction, {jax.default_backend()}).\n'mode dist': new samples' "
        f"mean distance to the nearest mixture mean (the data's own: "
        f"{data['data_mode_distance']:.3f})."
    )
    print(f"{'steps':>6} {'rms error':>11} {'latent std':>11} {'mode dist':>10} {'ms':>8}")
    for r in rows:
        print(
            f"{r['steps']:>6} {r['rms_error']:>11.3e} {r['latent_std']:>11.3f} "
            f"{r['mode_distance']:>10.3f} {r['ms']:>8.2f}"
        )


def _demo(args: argparse.Namespace) -> None:
    from jaxsched.demo.denoiser import FLOW_WEIGHTS, WEIGHTS
    from jaxsched.demo.run import format_table, run_demo

    weights, flow_weights = args.weights or WEIGHTS, args.flow_weights or FLOW_WEIGHTS
    if args.train:
        weights, flow_weights = _train(args)
    print(f"jaxsched demo: 8x8 digits, {jax.default_backend()}; writing to {args.out}/")
    metrics = run_demo(args.out, weights=weights, flow_weights=flow_weights, seed=args.seed)
    print(format_table(metrics))
    print(
        f"wrote {args.out}/samples.png, {args.out}/inversion.png, {args.out}/trajectory.png, "
        f"{args.out}/metrics.json"
    )


def _train(args: argparse.Namespace) -> tuple[Path, Path]:
    """Retrain both demo denoisers (noise prediction, then flow matching) from scratch with a
    progress bar each; return the two weights' paths."""
    from tqdm import tqdm

    from jaxsched.demo.denoiser import FLOW_WEIGHTS, WEIGHTS, save_params
    from jaxsched.demo.digits import load_digits
    from jaxsched.demo.train import train

    train_set, _ = load_digits()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    paths = []
    for objective, shipped in (("epsilon", WEIGHTS), ("flow", FLOW_WEIGHTS)):
        with tqdm(total=args.train_steps, desc=f"training ({objective})", unit="step") as bar:

            def progress(step: int, loss: float) -> None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{loss:.4f}")

            params = train(
                train_set.images,
                steps=args.train_steps,
                seed=args.seed,
                objective=objective,
                on_step=progress,
            )
        path = save_params(params, Path(args.out) / shipped.name)
        print(f"saved the new {objective} weights to {path}")
        paths.append(path)
    return paths[0], paths[1]


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def weights_file(text: str) -> Path:
    """An argparse type: a file holding the demo denoiser's weights (loaded once to check)."""
    from jaxsched.demo.denoiser import load_params

    try:
        load_params(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return Path(text)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jaxsched", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="sample and invert 8x8 digits with every scheduler, two denoisers"
    )
    demo.add_argument("--out", default="jaxsched-demo", help="output folder")
    weights = demo.add_mutually_exclusive_group()
    weights.add_argument("--train", action="store_true", help="retrain both denoisers first")
    weights.add_argument(
        "--weights",
        type=weights_file,
        help="noise-prediction denoiser weights to use (default: the shipped ones)",
    )
    weights.add_argument(
        "--flow-weights",
        type=weights_file,
        help="flow-matching denoiser weights to use (default: the shipped ones)",
    )
    demo.add_argument("--train-steps", type=positive_int, default=20_000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    example = commands.add_parser("example", help="DDIM sample + invert on an analytic model")
    example.add_argument("--steps", type=positive_int, nargs="+", default=[10, 25, 50, 100, 250])
    example.add_argument("--num-samples", type=positive_int, default=512)
    example.add_argument("--dim", type=positive_int, default=16)
    example.add_argument("--seed", type=int, default=0)
    example.set_defaults(run=_example)
    args = parser.parse_args(argv)
    args.run(args)
