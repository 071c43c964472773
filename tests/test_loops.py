"""eager == jit == vmap == scan; batches of schedules; no retracing; analytic round trips."""

from __future__ import annotations

import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsched
from jaxsched.analytic import epsilon_model, random_mixture

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SHAPE = (3, 2, 5)


def toy_model(x, t):
    """A smooth, t-dependent stand-in for a denoiser."""
    return 0.8 * jnp.tanh(x) + 0.001 * t.astype(x.dtype)


def python_loop(sched, state, model_fn, x, noises=None, **kwargs):
    """Reference: eager steps in a Python loop."""
    for i in range(state.num_inference_steps):
        t = state.timesteps[i]
        extra = {} if noises is None else {"noise": noises[i]}
        state, x = sched.step(state, model_fn(x, t), t, x, **extra, **kwargs)
    return state, x


SCHEDULERS = [
    jaxsched.DDIMScheduler(**SD),
    jaxsched.DDIMScheduler(
        thresholding=True, prediction_type="v_prediction", timestep_spacing="trailing"
    ),
    jaxsched.DDIMInverseScheduler(
        clip_sample=False, prediction_type="sample", set_alpha_to_one=False
    ),
]


class StepTransformsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*[(s,) for s in SCHEDULERS])
    def test_variants_of_a_run_agree(self, sched):
        x = jax.random.normal(jax.random.key(0), SHAPE)
        state = sched.init(8, SHAPE)
        step = self.variant(sched.step)
        expected_state, expected = python_loop(sched, state, toy_model, x)
        for i in range(8):
            t = state.timesteps[i]
            state, x = step(state, toy_model(x, t), t, x)
        chex.assert_trees_all_close(x, expected, rtol=1e-6, atol=1e-6)
        chex.assert_trees_all_close(state, expected_state, rtol=1e-6, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_stochastic_sample_equals_stepwise_loop(self):
        sched = jaxsched.DDIMScheduler(**SD, clip_sample=False)
        state = sched.init(6, SHAPE)
        x = jax.random.normal(jax.random.key(1), SHAPE)
        noises = jax.random.normal(jax.random.key(2), (6, *SHAPE))
        run = self.variant(
            lambda s, x, z: jaxsched.sample(sched, s, toy_model, x, noise=z, eta=0.7)
        )
        _, expected = python_loop(sched, state, toy_model, x, noises, eta=0.7)
        chex.assert_trees_all_close(run(state, x, noises), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sched", SCHEDULERS)
def test_scan_equals_python_loop(sched):
    x = jax.random.normal(jax.random.key(3), SHAPE)
    state = sched.init(12, SHAPE)
    expected_state, expected = python_loop(sched, state, toy_model, x)
    final_state, got = jax.jit(
        lambda s, x: jaxsched.sample(sched, s, toy_model, x, return_state=True)
    )(state, x)
    chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(final_state, expected_state, rtol=1e-6, atol=1e-6)
    assert int(final_state.step_index) == 12


def item(tree, i: int):
    """Entry ``i`` of a batched pytree."""
    return jax.tree.map(lambda leaf: leaf[i], tree)


def test_vmap_step_over_states_and_samples():
    sched = jaxsched.DDIMScheduler(**SD, thresholding=True)
    schedules = jax.vmap(lambda b: jaxsched.noise_schedule("linear", beta_start=b))(
        jnp.linspace(1e-4, 1e-3, 4)
    )
    states = jax.vmap(lambda s: sched.init(5, SHAPE, schedule=s))(schedules)
    xs = jax.random.normal(jax.random.key(4), (4, *SHAPE))
    t = states.timesteps[:, 0]
    new_states, new_xs = jax.vmap(sched.step)(states, jax.vmap(toy_model)(xs, t), t, xs)
    for i in range(4):
        one = sched.init(5, SHAPE, schedule=item(schedules, i))
        s, x = sched.step(one, toy_model(xs[i], t[i]), t[i], xs[i])
        chex.assert_trees_all_close(x, new_xs[i], rtol=1e-6, atol=1e-6)
        chex.assert_trees_all_close(s, item(new_states, i), rtol=1e-6, atol=1e-6)


def test_vmap_over_eight_schedules_equals_separate_runs_and_does_not_retrace():
    sched = jaxsched.DDIMScheduler(**SD, clip_sample=False)
    traces = []

    @jax.jit
    def run_batch(beta_starts, beta_ends, x_ts):
        traces.append(1)
        batch = jax.vmap(
            lambda b0, b1: jaxsched.noise_schedule("scaled_linear", beta_start=b0, beta_end=b1)
        )(beta_starts, beta_ends)
        states = jax.vmap(lambda s: sched.init(20, SHAPE, schedule=s))(batch)
        return jax.vmap(lambda st, x: jaxsched.sample(sched, st, toy_model, x))(states, x_ts)

    starts = jnp.linspace(0.0005, 0.0015, 8)
    ends = jnp.linspace(0.010, 0.020, 8)
    x_ts = jax.random.normal(jax.random.key(5), (8, *SHAPE))
    got = run_batch(starts, ends, x_ts)
    for i in range(8):
        schedule = jaxsched.noise_schedule(
            "scaled_linear", beta_start=float(starts[i]), beta_end=float(ends[i])
        )
        state = sched.init(20, SHAPE, schedule=schedule)
        _, expected = python_loop(sched, state, toy_model, x_ts[i])
        chex.assert_trees_all_close(got[i], expected, rtol=2e-5, atol=2e-5)
    run_batch(starts * 1.1, ends * 0.9, x_ts + 1.0)
    assert len(traces) == 1


def test_equal_schedulers_share_compilations():
    traces = []

    def run(sched, state, x):
        traces.append(1)
        return jaxsched.sample(sched, state, toy_model, x)

    run = jax.jit(run, static_argnums=0)
    x = jnp.ones(SHAPE)
    a, b = jaxsched.DDIMScheduler(**SD), jaxsched.DDIMScheduler(**SD)
    assert a == b and hash(a) == hash(b)
    run(a, a.init(10, SHAPE), x)
    run(b, b.init(10, SHAPE), x * 2)
    assert len(traces) == 1


def test_traced_eta_and_flags_match_python_values():
    sched = jaxsched.DDIMScheduler(clip_sample_range=0.5)
    state = sched.init(4, SHAPE)
    x = jax.random.normal(jax.random.key(6), SHAPE)
    z = jax.random.normal(jax.random.key(7), SHAPE)
    t = state.timesteps[0]
    m = toy_model(x, t)
    _, eager = sched.step(state, m, t, x, eta=0.4, use_clipped_model_output=True, noise=z)
    traced = jax.jit(sched.step)(state, m, t, x, eta=0.4, use_clipped_model_output=True, noise=z)
    chex.assert_trees_all_close(traced[1], eager, rtol=1e-6, atol=1e-6)
    _, deterministic = sched.step(state, m, t, x)
    _, zero_eta = jax.jit(sched.step)(state, m, t, x, eta=0.0, noise=z)
    chex.assert_trees_all_close(zero_eta, deterministic, rtol=1e-6, atol=1e-6)


def test_same_key_same_sample_and_different_key_different_sample():
    sched = jaxsched.DDIMScheduler(**SD)
    state = sched.init(10, SHAPE)
    x = jnp.zeros(SHAPE)
    run = jax.jit(lambda k, eta: jaxsched.sample(sched, state, toy_model, x, key=k, eta=eta))
    first = run(jax.random.key(8), 1.0)
    chex.assert_trees_all_equal(first, run(jax.random.key(8), 1.0))
    assert not np.allclose(first, run(jax.random.key(9), 1.0))


@pytest.mark.parametrize("jit", [False, True], ids=["concrete", "traced"])
def test_sample_from_a_later_step_continues_the_run(jit):
    """A concrete step_index scans the remaining steps; a traced one (under jit) scans all N
    and the iterations past the end are exact no-ops."""
    sched = jaxsched.DDIMScheduler(**SD)
    state = sched.init(10, SHAPE)
    x = jax.random.normal(jax.random.key(10), SHAPE)
    expected_state, expected = python_loop(sched, state, toy_model, x)
    for i in range(4):
        t = state.timesteps[i]
        state, x = sched.step(state, toy_model(x, t), t, x)

    def run(s, x):
        return jaxsched.sample(sched, s, toy_model, x, return_state=True)

    final_state, got = (jax.jit(run) if jit else run)(state, x)
    chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(final_state, expected_state, rtol=1e-6, atol=1e-6)


def test_thresholding_under_vmap_needs_a_leading_batch_axis_per_item():
    """Per-sample thresholding reduces over all but the leading axis; vmapping over single
    samples therefore gives each a leading axis of 1 and matches the batched step."""
    sched = jaxsched.DDIMScheduler(thresholding=True, sample_max_value=4.0)
    x = 3 * jax.random.normal(jax.random.key(15), (4, 3, 6))
    m = jax.random.normal(jax.random.key(16), (4, 3, 6))
    batched = sched.init(10, x.shape)
    t = batched.timesteps[0]
    _, expected = sched.step(batched, m, t, x)
    single = sched.init(10, (1, 3, 6))
    _, got = jax.vmap(lambda m, x: sched.step(single, m, t, x))(m[:, None], x[:, None])
    chex.assert_trees_all_close(got[:, 0], expected, rtol=1e-6, atol=1e-6)


def test_invert_equals_sample_with_the_inverse_scheduler():
    sched = jaxsched.DDIMScheduler(**SD, clip_sample=False, timestep_spacing="trailing")
    x0 = jax.random.normal(jax.random.key(11), SHAPE)
    inverse = sched.inverse()
    expected = jaxsched.sample(inverse, inverse.init(15, SHAPE), toy_model, x0)
    chex.assert_trees_all_close(jaxsched.invert(sched, toy_model, x0, 15), expected)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_round_trip_on_gaussian_mixture_converges(spacing):
    """invert then sample with the exact noise prediction returns to the data, better with
    more steps."""
    sched = jaxsched.DDIMScheduler(**SD, clip_sample=False, timestep_spacing=spacing)
    mixture = random_mixture(jax.random.key(12), num_components=4, dim=8)
    model_fn = epsilon_model(mixture, sched.noise_schedule())
    x0 = mixture.sample(jax.random.key(13), 256)

    @functools.partial(jax.jit, static_argnums=0)
    def round_trip(n, x0):
        x_t = jaxsched.invert(sched, model_fn, x0, n)
        return x_t, jaxsched.sample(sched, sched.init(n, x0.shape), model_fn, x_t)

    errors = []
    for n in (10, 40, 160):
        x_t, x_rec = round_trip(n, x0)
        errors.append(float(jnp.sqrt(jnp.mean((x_rec - x0) ** 2))))
        assert 0.6 < float(jnp.std(x_t)) < 1.2  # the inverted latents look like noise
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.35 * errors[0]


@settings(max_examples=25, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=0, max_dims=4, max_side=4),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16]),
    prediction_type=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    thresholding=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_step_preserves_shape_and_dtype_and_computes_in_float32(
    shape, dtype, prediction_type, thresholding, seed
):
    sched = jaxsched.DDIMScheduler(prediction_type=prediction_type, thresholding=thresholding)
    state = sched.init(10, shape, dtype)
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, shape).astype(dtype)
    m = jax.random.normal(k2, shape).astype(dtype)
    t = state.timesteps[0]
    new_state, x_new = sched.step(state, m, t, x)
    assert x_new.shape == shape and x_new.dtype == dtype
    assert new_state.pred_original_sample.dtype == dtype
    assert bool(jnp.isfinite(x_new.astype(jnp.float32)).all())
    full = sched.init(10, shape, jnp.float32)
    _, x_f32 = sched.step(full, m.astype(jnp.float32), t, x.astype(jnp.float32))
    chex.assert_trees_all_equal(x_new, x_f32.astype(dtype))
    _, x_jit = jax.jit(sched.step)(state, m, t, x)
    chex.assert_trees_all_close(
        x_jit.astype(jnp.float32), x_new.astype(jnp.float32), rtol=1e-2, atol=1e-2
    )


def test_x64_runs_float64_end_to_end():
    with jax.enable_x64(True):
        sched = jaxsched.DDIMScheduler(**SD)
        state = sched.init(5, SHAPE)
        assert state.coefficients.start.alpha.dtype == jnp.float64
        assert state.pred_original_sample.dtype == jnp.float64
        stale = sched.init(5, SHAPE, schedule=jaxsched.noise_schedule(dtype=jnp.float32))
        assert stale.coefficients.start.alpha.dtype == jnp.float64
        x = jnp.ones(SHAPE, jnp.float64)
        state, x = sched.step(state, toy_model(x, state.timesteps[0]), state.timesteps[0], x)
        assert x.dtype == jnp.float64 and state.pred_original_sample.dtype == jnp.float64


def test_low_precision_schedule_is_promoted_to_float32_tables():
    sched = jaxsched.DDIMScheduler()
    low = jaxsched.noise_schedule(dtype=jnp.bfloat16)
    state = sched.init(5, SHAPE, schedule=low)
    assert state.coefficients.start.alpha.dtype == jnp.float32
    assert state.schedule.alphas_cumprod.dtype == jnp.float32


def test_thresholding_is_per_sample():
    """Scaling one batch item must not change another's thresholded x0 (Imagen, per sample)."""
    sched = jaxsched.DDIMScheduler(
        thresholding=True, sample_max_value=4.0, prediction_type="sample"
    )
    state = sched.init(10, (2, 3, 8))
    m = jax.random.normal(jax.random.key(14), (2, 3, 8)) * 2
    x = jnp.zeros((2, 3, 8))
    t = state.timesteps[0]
    a, _ = sched.step(state, m, t, x)
    b, _ = sched.step(state, m.at[1].multiply(3.0), t, x)
    chex.assert_trees_all_close(a.pred_original_sample[0], b.pred_original_sample[0])
    s = jnp.clip(jnp.quantile(jnp.abs(m[0]), 0.995), 1.0, 4.0)
    chex.assert_trees_all_close(
        a.pred_original_sample[0], jnp.clip(m[0], -s, s) / s, rtol=1e-6, atol=1e-6
    )


@settings(max_examples=15, deadline=None)
@given(
    cls=st.sampled_from([jaxsched.DDIMScheduler, jaxsched.DDIMInverseScheduler]),
    prediction_type=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    spacing=st.sampled_from(["leading", "trailing", "linspace"]),
    beta_schedule=st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
    clip_sample=st.booleans(),
    num_steps=st.integers(1, 30),
    seed=st.integers(0, 2**16),
)
def test_eager_loop_equals_jitted_scan_for_random_configs(
    cls, prediction_type, spacing, beta_schedule, clip_sample, num_steps, seed
):
    sched = cls(
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        beta_schedule=beta_schedule,
        clip_sample=clip_sample,
        set_alpha_to_one=False,
    )
    state = sched.init(num_steps, SHAPE)
    x = jax.random.normal(jax.random.key(seed), SHAPE)
    _, expected = python_loop(sched, state, toy_model, x)
    got = jax.jit(lambda s, x: jaxsched.sample(sched, s, toy_model, x))(state, x)
    assert bool(jnp.isfinite(got).all())
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 7, 25])
def test_unrolled_scan_is_the_same_loop(steps):
    """Multistep samplers unroll 4 steps per scan iteration by default (fewer buffer copies);
    any unroll, with or without a remainder, gives the same result, concrete or traced."""
    sched = jaxsched.DPMSolverMultistepScheduler(solver_order=3)
    assert sched.scan_unroll == 4 and jaxsched.DDIMScheduler.scan_unroll == 1
    state = sched.init(steps, (2, 5))
    x = jax.random.normal(jax.random.key(0), (2, 5))

    def model(x, t):
        return 0.3 * x + 1e-3 * t

    plain = jaxsched.sample(sched, state, model, x, unroll=1)
    chex.assert_trees_all_close(jaxsched.sample(sched, state, model, x), plain, rtol=1e-6)
    traced = jax.jit(lambda s, x: jaxsched.sample(sched, s, model, x, unroll=3))(state, x)
    chex.assert_trees_all_close(traced, plain, rtol=1e-6)


# -- per-step trajectories and progress ---------------------------------------------------------


def stepwise_trajectory(sched, state, model_fn, x):
    """The samples, x0 predictions and timesteps of an eager step loop from ``state``."""
    samples, x0s, ts = [], [], []
    for i in range(int(state.step_index), state.num_inference_steps):
        t = state.timesteps[i]
        state, x = sched.step(state, model_fn(x, t), t, x)
        samples.append(x)
        x0s.append(state.pred_original_sample)
        ts.append(t)
    return jaxsched.Trajectory(jnp.stack(samples), jnp.stack(x0s), jnp.stack(ts))


@pytest.mark.parametrize("name", sorted(jaxsched.SCHEDULERS))
def test_trajectory_is_every_step_of_the_step_loop(name):
    sched = jaxsched.SCHEDULERS[name]()
    state = sched.init(9, SHAPE, begin_index=2)
    x = jax.random.normal(jax.random.key(4), SHAPE)
    expected = stepwise_trajectory(sched, state, toy_model, x)
    out, trajectory = jaxsched.sample(sched, state, toy_model, x, return_trajectory=True)
    chex.assert_trees_all_close(trajectory, expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(trajectory.samples[-1], out)
    for remat in ("step", "sqrt"):
        _, again = jaxsched.sample(sched, state, toy_model, x, return_trajectory=True, remat=remat)
        chex.assert_trees_all_close(again, trajectory, rtol=1e-5, atol=1e-6)


def test_trajectory_of_a_traced_state_has_n_rows_and_repeats_the_end():
    sched = jaxsched.DPMSolverMultistepScheduler()
    state = sched.init(6, SHAPE, begin_index=4)
    x = jax.random.normal(jax.random.key(5), SHAPE)
    _, concrete = jaxsched.sample(sched, state, toy_model, x, return_trajectory=True)
    run = jax.jit(lambda s, x: jaxsched.sample(sched, s, toy_model, x, return_trajectory=True))
    _, traced = run(state, x)
    assert traced.samples.shape == (6, *SHAPE) and concrete.samples.shape == (2, *SHAPE)
    chex.assert_trees_all_close(traced.samples[:2], concrete.samples, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(traced.samples[2:], jnp.stack([concrete.samples[-1]] * 4))


def test_progress_reports_every_step_in_order_and_costs_nothing_when_off():
    sched = jaxsched.DEISMultistepScheduler()
    state = sched.init(7, SHAPE)
    x = jax.random.normal(jax.random.key(6), SHAPE)
    seen = []
    run = jax.jit(
        lambda s, x: jaxsched.sample(
            sched, s, toy_model, x, progress=lambda i, n: seen.append((i, n))
        )
    )
    jax.block_until_ready(run(state, x))
    assert seen == [(i, 7) for i in range(1, 8)]
    seen.clear()
    jax.block_until_ready(run(sched.init(7, SHAPE, begin_index=3), x))  # masked: 4 steps run
    assert seen == [(i, 7) for i in range(4, 8)]
    quiet = jax.make_jaxpr(lambda s, x: jaxsched.sample(sched, s, toy_model, x))(state, x)
    assert "callback" not in str(quiet)


def test_tqdm_progress_draws_one_bar_per_run(capsys):
    sched = jaxsched.DDIMScheduler()
    run = jax.jit(
        lambda s, x: jaxsched.sample(sched, s, toy_model, x, progress=jaxsched.tqdm_progress())
    )
    for _ in range(2):
        jax.block_until_ready(run(sched.init(5, SHAPE), jnp.zeros(SHAPE)))
    assert capsys.readouterr().err.count("5/5") == 2
