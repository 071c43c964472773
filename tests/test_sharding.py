"""Sharded sampling on 8 simulated CPU devices (a subprocess, since the device count is fixed
when JAX starts): the same results as one device, and no collective inside the loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    import jaxsched
    from jaxsched import sharding

    assert len(jax.devices()) == 8, jax.devices()
    COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                   "collective-permute")
    cases = {
        "DDIM eta=1 key": (jaxsched.DDIMScheduler(), {"eta": 1.0, "key": True}),
        "DPM++ 2M dynamic thresholding": (
            jaxsched.DPMSolverMultistepScheduler(thresholding=True, sample_max_value=1.5), {}),
        "SDE-DPM++ 3M key": (
            jaxsched.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++",
                                                 solver_order=3), {"key": True}),
        "DEIS inverse": (jaxsched.DEISMultistepInverseScheduler(), {}),
    }
    mesh = sharding.batch_mesh()
    x = jax.random.normal(jax.random.key(0), (16, 3, 8, 8))
    weights = jax.random.normal(jax.random.key(1), (3, 3)) / 3

    def model(params, x, t):
        # mixes channels per sample, as a network would
        return jnp.tanh(jnp.einsum("bchw,cd->bdhw", x, params)) + 1e-4 * t

    report = {}
    for name, (sched, options) in cases.items():
        state = sched.init(12, x.shape)
        kwargs = {"eta": options["eta"]} if "eta" in options else {}

        def run(state, params, x, key):
            extra = {"key": key} if options.get("key") else {}
            return jaxsched.sample(sched, state, lambda x, t: model(params, x, t), x,
                                   **extra, **kwargs)

        key = jax.random.key(2)
        single = jax.jit(run)(state, weights, x, key)
        args = (sharding.replicate(state, mesh), sharding.replicate(weights, mesh),
                sharding.shard_batch(x, mesh), sharding.replicate(key, mesh))
        compiled = jax.jit(run).lower(*args).compile()
        hlo = compiled.as_text()
        out = compiled(*args)
        report[name] = {
            "max_diff": float(jnp.max(jnp.abs(out - single))),
            "collectives": [c for c in COLLECTIVES if c in hlo],
            "out_sharding_is_batch": out.sharding.is_equivalent_to(
                sharding.batch_sharding(mesh, x.ndim), x.ndim),
            "per_device_batch": [s.data.shape[0] for s in out.addressable_shards],
        }
    try:
        sharding.shard_batch(x[:12], mesh)
    except ValueError as error:
        report["uneven batch"] = str(error)
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CASES = ["DDIM eta=1 key", "DPM++ 2M dynamic thresholding", "SDE-DPM++ 3M key", "DEIS inverse"]


@pytest.mark.parametrize("name", CASES)
def test_sharded_sampling_equals_one_device(report, name):
    assert report[name]["max_diff"] < 1e-5, report[name]
    assert report[name]["out_sharding_is_batch"], report[name]
    assert report[name]["per_device_batch"] == [2] * 8, report[name]


@pytest.mark.parametrize("name", CASES)
def test_the_sharded_loop_has_no_collectives(report, name):
    assert report[name]["collectives"] == [], report[name]


def test_an_uneven_batch_is_rejected(report):
    assert "does not split evenly over 8 devices" in report["uneven batch"]


def test_a_batch_sharding_needs_a_batch_axis():
    import jax

    import jaxsched

    mesh = jaxsched.sharding.batch_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="leading batch axis"):
        jaxsched.sharding.batch_sharding(mesh, 0)
