"""Sharded sampling on a simulated 8-device CPU mesh: the batch split over devices against the
same loop on one device, in one process.

The device count is fixed when JAX starts, so :func:`sharded_table` runs this module in a
subprocess with ``--xla_force_host_platform_device_count=8``. The 8 simulated devices share
this machine's cores, so the timing shows the overhead of the sharded program, not a speed-up;
on a real mesh each device runs ``1 / 8`` of the batch with no communication (the HLO check).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

DEVICES = 8
SHAPE = (64, 4, 32, 32)
STEPS = 25
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def _measure(rounds: int) -> list[dict]:
    """The rows, run inside the 8-device process."""
    import jax
    import jax.numpy as jnp

    import jaxsched
    from benchmarks.speed import SD, interleaved_medians
    from jaxsched import sharding

    mesh = sharding.batch_mesh()
    x = jax.random.normal(jax.random.key(0), SHAPE)
    weights = jax.random.normal(jax.random.key(1), (SHAPE[1], SHAPE[1])) / SHAPE[1]

    def model(x, t):  # mixes channels per sample, as a network would
        return jnp.tanh(jnp.einsum("bchw,cd->bdhw", x, weights)) + 1e-4 * t

    rows = []
    for label, sched in (
        ("DDIM", jaxsched.DDIMScheduler(**SD)),
        ("DPM++ 2M", jaxsched.DPMSolverMultistepScheduler(**SD)),
    ):
        state = sched.init(STEPS, x.shape)
        run = jax.jit(lambda state, x, sched=sched: jaxsched.sample(sched, state, model, x))
        sharded_args = (sharding.replicate(state, mesh), sharding.shard_batch(x, mesh))
        compiled = run.lower(*sharded_args).compile()
        hlo = compiled.as_text()
        medians = interleaved_medians(
            {
                "one_device_ms": (lambda args, run=run: run(*args), (state, x)),
                "sharded_ms": (lambda args, f=compiled: f(*args), sharded_args),
            },
            rounds,
        )
        rows.append(
            {
                "scheduler": label,
                "devices": len(jax.devices()),
                "batch_per_device": SHAPE[0] // len(jax.devices()),
                **medians,
                "max_abs_diff": float(jnp.max(jnp.abs(compiled(*sharded_args) - run(state, x)))),
                "collectives_in_hlo": sum(hlo.count(c) for c in COLLECTIVES),
            }
        )
    return rows


def sharded_table(rounds: int = 20) -> list[dict]:
    """The rows, measured in a subprocess with ``DEVICES`` simulated CPU devices."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
        JAX_PLATFORMS="cpu",
    )
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.sharded", str(rounds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(_measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20)))
