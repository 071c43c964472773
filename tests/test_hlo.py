"""The compiled sampling loop stays lean: per step, one elementwise pass over the sample."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest

import jaxsched

SHAPE = (4, 4, 32, 32)
FULL = r"f32\[4,4,32,32\]"


def _while_body(hlo: str) -> str:
    body_name = re.search(r"while\(.*?body=%?([\w.\-]+)", hlo).group(1)
    start = re.search(rf"^%?{re.escape(body_name)} \(", hlo, re.M).start()
    return hlo[start : hlo.index("\n}", start)]


def test_ddim_sample_loop_is_one_fused_pass_per_step():
    sched = jaxsched.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    state = sched.init(25, SHAPE)
    run = jax.jit(lambda s, x: jaxsched.sample(sched, s, lambda x, t: 0.1 * x, x))
    body = _while_body(run.lower(state, jnp.ones(SHAPE)).compile().as_text())
    full_size = [line for line in body.splitlines() if re.search(rf"= {FULL}\S* ", line)]
    fusions = [line for line in full_size if " fusion(" in line]
    copies = [line for line in full_size if " copy(" in line]
    assert len(fusions) == 1, full_size
    assert not copies, copies


def _max_order(cls) -> dict:
    """Options of ``cls`` that carry the most history (its highest order)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {"solver_order": 3} if "solver_order" in names else {}


@pytest.mark.parametrize("name", sorted(jaxsched.SCHEDULERS))
def test_every_sample_loop_touches_each_carried_array_once_per_step(name):
    """Over the registry: a scan iteration (``scan_unroll`` steps) has at most one full-size
    fusion and one full-size copy per array the loop carries (the sample and each array of
    its history), so a family's update stays one pass over its state whatever its order."""
    sched = jaxsched.SCHEDULERS[name](**_max_order(jaxsched.SCHEDULERS[name]))
    state = sched.init(25, SHAPE)
    run = jax.jit(lambda s, x: jaxsched.sample(sched, s, lambda x, t: 0.1 * x, x))
    body = _while_body(run.lower(state, jnp.ones(SHAPE)).compile().as_text())
    full_size = [line for line in body.splitlines() if re.search(rf"= {FULL}\S* ", line)]
    carried = 1 + len(jax.tree.leaves(sched.solver.initial_history(SHAPE, jnp.float32)))
    # A two-stage step (Heun) runs its predictor and corrector calls in one scan iteration
    # (scan_unroll 2): one pass over the carried arrays per call (measured: 6 for 3 arrays).
    passes = sched.capabilities.model_calls_per_step
    fusions = [line for line in full_size if " fusion(" in line]
    assert len(fusions) <= carried * passes, full_size
    assert len([line for line in full_size if " copy(" in line]) <= carried, full_size
