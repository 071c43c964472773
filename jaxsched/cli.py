"""The ``jaxsched`` command line: ``jaxsched example`` samples and inverts with DDIM on an exact
Gaussian-mixture model and prints the reconstruction error."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

import jaxsched
from jaxsched.analytic import epsilon_model, random_mixture


def run_example(step_counts: Sequence[int], num_samples: int, dim: int, seed: int) -> list[dict]:
    """Invert data to noise and regenerate it for each step count; returns one row per count."""
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

    rows = []
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
                "sample_mean_dist": float(
                    jnp.min(
                        jnp.linalg.norm(x_new[:, None] - mixture.means[None], axis=-1), 1
                    ).mean()
                ),
                "ms": 1e3 * seconds,
            }
        )
    return rows


def _example(args: argparse.Namespace) -> None:
    rows = run_example(args.steps, args.num_samples, args.dim, args.seed)
    print(
        f"DDIM invert -> regenerate on a {args.dim}-D Gaussian mixture "
        f"({args.num_samples} points, exact noise prediction, {jax.default_backend()})"
    )
    print(f"{'steps':>6} {'rms error':>11} {'latent std':>11} {'dist to mode':>13} {'ms':>8}")
    for r in rows:
        print(
            f"{r['steps']:>6} {r['rms_error']:>11.3e} {r['latent_std']:>11.3f} "
            f"{r['sample_mean_dist']:>13.3f} {r['ms']:>8.2f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jaxsched", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    example = commands.add_parser("example", help="DDIM sample + invert on an analytic model")
    example.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100, 250])
    example.add_argument("--num-samples", type=int, default=512)
    example.add_argument("--dim", type=int, default=16)
    example.add_argument("--seed", type=int, default=0)
    example.set_defaults(run=_example)
    args = parser.parse_args(argv)
    args.run(args)
