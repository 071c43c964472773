"""A seeded slice of the differential fuzzer (``tests/fuzz_diffusers.py``): random option
combinations of every scheduler diffusers also has, run step by step against diffusers.

Per class: no case where jaxsched fails (raises mid-run, turns non-finite where diffusers is
finite, or ``sample`` disagrees with its own step loop); no mismatch that neither a documented
difference nor float32 rounding explains (the fuzzer's oracles: diffusers run in float64, or
with a begin index); and jaxsched rejects what diffusers runs only with a documented reason.
The full fuzzer runs thousands of cases: ``python tests/fuzz_diffusers.py --cases 3000``.
"""

from __future__ import annotations

import fuzz_diffusers
import jax.numpy as jnp
import pytest
from fuzz_diffusers import DOCUMENTED_REJECTIONS, draw_case, explained, fuzz, run_case

SEED = 0
CASES_PER_CLASS = 12


def describe(results) -> str:
    """Reproducers: ``python tests/fuzz_diffusers.py --seed 0 --replay CLASS:INDEX``."""
    lines = []
    for r in results:
        d = r.case.describe()
        lines.append(
            f"{d['cls_name']}:{d['index']} N={d['num_inference_steps']} {d['dtype']} "
            f"config={d['config']} step={r.step} tags={r.tags}: {r.message[:200]}"
        )
    return "\n".join(lines)


@pytest.mark.parametrize("cls_name", fuzz_diffusers.CLASSES)
def test_seeded_cases_match_diffusers_or_differ_as_documented(cls_name):
    results = fuzz(CASES_PER_CLASS, SEED, (cls_name,))
    failures = [r for r in results if r.category == "jaxsched_fails"]
    assert not failures, describe(failures)
    mismatches = [r for r in results if r.category == "mismatch" and not explained(r)]
    assert not mismatches, describe(mismatches)
    rejected = [
        r
        for r in results
        if r.category == "jaxsched_rejects"
        and not any(text in r.message for text in DOCUMENTED_REJECTIONS)
    ]
    assert not rejected, describe(rejected)
    # the slice must exercise the comparison, not only rejections
    assert sum(r.category == "match" for r in results) >= CASES_PER_CLASS // 3


def test_the_fuzzer_catches_a_perturbed_or_broken_step(monkeypatch):
    """A step off by 1e-3, or NaN, is a mismatch or a failure (the harness can fail)."""
    case = draw_case("DDIMScheduler", SEED, 0)
    assert run_case(case).category == "match"
    from jaxsched.solvers import ddim

    update = ddim.ddim_update

    def off(*args, **kwargs):
        x, x0 = update(*args, **kwargs)
        return x * (1 + 1e-3), x0

    monkeypatch.setattr(ddim, "ddim_update", off)
    assert run_case(case).category == "mismatch"

    def broken(*args, **kwargs):
        x, x0 = update(*args, **kwargs)
        return jnp.full_like(x, jnp.nan), x0

    monkeypatch.setattr(ddim, "ddim_update", broken)
    assert run_case(case).category == "jaxsched_fails"
