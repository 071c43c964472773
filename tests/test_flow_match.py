"""FlowMatchEulerDiscreteScheduler against diffusers 0.42.1, step by step, for every option;
the inverse scheduler's round trip; and convergence on the exact rectified-flow mixture."""

from __future__ import annotations

from unittest import mock

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxsched

CLS = "FlowMatchEulerDiscreteScheduler"
SHAPE = (2, 3, 4, 4)

#: (config, init arguments): every option of the class, and every way set_timesteps takes a grid.
CASES = [
    ({}, {}),
    ({"shift": 3.0}, {}),
    ({"use_dynamic_shifting": True}, {"mu": 0.8}),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 2.5}),
    ({"shift": 3.0, "shift_terminal": 0.1}, {}),
    ({"shift": 3.0, "use_karras_sigmas": True}, {}),
    ({"shift": 2.0, "use_exponential_sigmas": True}, {}),
    ({"use_beta_sigmas": True}, {}),
    ({"invert_sigmas": True, "shift": 3.0}, {}),
    ({"num_train_timesteps": 100, "shift": 1.5}, {}),
    ({"use_dynamic_shifting": True}, {"mu": 1.1, "flux_sigmas": True}),
    ({"shift": 3.0}, {"timesteps": [999.0, 700.0, 420.5, 200.0, 50.0]}),
    ({"shift": 3.0}, {"sigmas": [1.0, 0.8, 0.5, 0.3, 0.1], "timesteps": [999, 800, 500, 300, 100]}),
    ({"stochastic_sampling": True, "shift": 3.0}, {}),
]


def _ids(case) -> str:
    config, kwargs = case
    return ",".join(f"{k}={v}" for k, v in {**config, **kwargs}.items() if k != "timesteps") or (
        "default"
    )


def _grid_kwargs(kwargs: dict, n: int) -> tuple[dict, dict]:
    """``(diffusers set_timesteps kwargs, jaxsched init kwargs)``."""
    kwargs = dict(kwargs)
    if kwargs.pop("flux_sigmas", False):  # the Flux pipelines' custom grid
        kwargs["sigmas"] = np.linspace(1.0, 1.0 / n, n)
    ours = {k: v for k, v in kwargs.items()}
    theirs = dict(kwargs)
    if "sigmas" in kwargs or "timesteps" in kwargs:
        return theirs, ours
    return {"num_inference_steps": n, **theirs}, {"num_inference_steps": n, **ours}


def _velocity(x: np.ndarray, t: float) -> np.ndarray:
    return (0.6 * np.tanh(x) - 0.3 + 1e-4 * t).astype(np.float32)


def _run_side_by_side(config: dict, kwargs: dict, n: int, begin_index: int | None = None):
    """Yield ``(i, ours, theirs)`` after every step of both schedulers from the same start."""
    ref = getattr(diffusers, CLS)(**config)
    theirs_grid, ours_grid = _grid_kwargs(kwargs, n)
    ref.set_timesteps(**theirs_grid)
    sched = jaxsched.FlowMatchEulerDiscreteScheduler(**config)
    num = ours_grid.pop("num_inference_steps", None)
    state = sched.init(num, SHAPE, begin_index=begin_index, **ours_grid)
    stochastic = bool(config.get("stochastic_sampling"))
    yield from _step_both(ref, sched, state, {}, stochastic, begin_index)


def _step_both(ref, sched, state, step_kwargs: dict, stochastic: bool, begin_index):
    """Yield ``(i, ours, theirs)`` after every model call of diffusers' ``ref`` and ``sched``
    from the same start (noised to the begin index with ``scale_noise``, as img2img does),
    feeding both the same velocity and, where ``stochastic``, the same noise."""
    np.testing.assert_array_equal(np.asarray(state.timesteps), ref.timesteps.numpy())
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    if begin_index is not None:
        ref.set_begin_index(begin_index)
        x0 = rng.standard_normal(SHAPE).astype(np.float32)
        t = ref.timesteps[begin_index : begin_index + 1].repeat(SHAPE[0])
        theirs = ref.scale_noise(torch.from_numpy(x0), t, torch.from_numpy(x)).numpy()
        ours = sched.scale_noise(state, jnp.asarray(x0), jnp.asarray(t.numpy()), jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-6, atol=1e-6)
        x = theirs
    x_ref, x_ours = torch.from_numpy(x), jnp.asarray(x)
    step = jax.jit(sched.step)
    draws = f"{type(ref).__module__}.randn_tensor"
    for i in range(begin_index or 0, len(ref.timesteps)):
        t = ref.timesteps[i]
        noise = rng.standard_normal(SHAPE).astype(np.float32)
        with mock.patch(draws, return_value=torch.from_numpy(noise)):
            velocity = torch.from_numpy(_velocity(x_ref.numpy(), float(t)))
            x_ref = ref.step(velocity, t, x_ref, **step_kwargs).prev_sample
        extra = {"noise": jnp.asarray(noise)} if stochastic else {}
        v = jnp.asarray(_velocity(np.asarray(x_ours), float(t)))
        state, x_ours = step(state, v, state.timesteps[i], x_ours, **step_kwargs, **extra)
        yield i, np.asarray(x_ours), x_ref.numpy()


def _custom_grid(kwargs: dict) -> bool:
    return "sigmas" in kwargs or "timesteps" in kwargs


#: Every case at 1, 5 and 28 steps; a custom grid fixes its own length (5); a one-step run
#: cannot be stretched to shift_terminal (below).
RUNS = [
    (case, n)
    for case in CASES
    for n in ((5,) if _custom_grid(case[1]) else (1, 5, 28))
    if not (n == 1 and "shift_terminal" in case[0])
]


@pytest.mark.parametrize(("case", "n"), RUNS, ids=[f"{n}-{_ids(c)}" for c, n in RUNS])
def test_every_step_matches_diffusers(case, n):
    config, kwargs = case
    steps = 0
    for i, ours, theirs in _run_side_by_side(config, kwargs, n):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=f"step {i}")
        steps += 1
    assert steps == n


def test_one_step_stretched_to_shift_terminal_is_refused_where_diffusers_is_nan():
    config = {"shift": 3.0, "shift_terminal": 0.1}
    ref = getattr(diffusers, CLS)(**config)
    ref.set_timesteps(1)
    assert torch.isnan(ref.sigmas[0])
    with pytest.raises(ValueError, match=r"shift_terminal=0\.1 stretches the grid"):
        jaxsched.FlowMatchEulerDiscreteScheduler(**config).init(1, SHAPE)


@pytest.mark.parametrize("begin_index", [0, 3, 7])
@pytest.mark.parametrize(
    "config", [{"shift": 3.0}, {"use_dynamic_shifting": True}], ids=["shift", "dynamic"]
)
def test_img2img_scale_noise_and_begin_index_match_diffusers(config, begin_index):
    """The Flux / SD3 img2img route: set_timesteps, set_begin_index(k), scale_noise at
    timesteps[k], then the remaining steps."""
    kwargs = {"mu": 0.9} if config.get("use_dynamic_shifting") else {}
    steps = 0
    for i, ours, theirs in _run_side_by_side(config, kwargs, 10, begin_index=begin_index):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=f"step {i}")
        steps += 1
    assert steps == 10 - begin_index


def _diffusers_loop(config: dict, n: int, x: np.ndarray, set_timesteps: dict) -> np.ndarray:
    ref = getattr(diffusers, CLS)(**config)
    ref.set_timesteps(n, **set_timesteps)
    sample = torch.from_numpy(x)
    for t in ref.timesteps:
        velocity = torch.from_numpy(_velocity(sample.numpy(), float(t)))
        sample = ref.step(velocity, t, sample).prev_sample
    return sample.numpy()


@pytest.mark.parametrize(
    ("config", "set_timesteps"),
    [({"shift": 3.0}, {}), ({"use_dynamic_shifting": True, "shift_terminal": 0.05}, {"mu": 0.7})],
)
def test_whole_loop_matches_diffusers(config, set_timesteps):
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    sched = jaxsched.FlowMatchEulerDiscreteScheduler(**config)
    state = sched.init(20, SHAPE, **set_timesteps)

    def model(x, t):
        return 0.6 * jnp.tanh(x) - 0.3 + 1e-4 * t

    ours = jax.jit(lambda s, x: jaxsched.sample(sched, s, model, x))(state, jnp.asarray(x))
    theirs = _diffusers_loop(config, 20, x, set_timesteps)
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=2e-5, atol=2e-5)


def test_calculate_shift_is_the_pipelines_formula():
    """diffusers' Flux pipeline module imports transformers; its calculate_shift is read from
    the installed source and run as written."""
    import ast
    import inspect
    import pathlib

    path = pathlib.Path(inspect.getfile(diffusers)).parent / "pipelines/flux/pipeline_flux.py"
    tree = ast.parse(path.read_text())
    (node,) = [n for n in tree.body if getattr(n, "name", None) == "calculate_shift"]
    namespace: dict = {}
    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    sched = jaxsched.FlowMatchEulerDiscreteScheduler(base_shift=0.4, max_shift=1.3)
    for seq_len in (256, 1024, 4096, 6000):
        assert jaxsched.calculate_shift(seq_len) == namespace["calculate_shift"](seq_len)
        expected = namespace["calculate_shift"](seq_len, base_shift=0.4, max_shift=1.3)
        assert sched.mu_for_image_seq_len(seq_len) == expected


def test_vmap_over_shifts_and_mus_matches_concrete_runs():
    sched = jaxsched.FlowMatchEulerDiscreteScheduler()
    x = jax.random.normal(jax.random.key(0), SHAPE)

    def model(x, t):
        return 0.5 * x + 1e-3 * t

    shifts = jnp.array([1.0, 3.0])
    schedules = jax.vmap(lambda s: jaxsched.flow_schedule(shift=s))(shifts)
    runs = jax.vmap(
        lambda schedule: jaxsched.sample(sched, sched.init(8, SHAPE, schedule=schedule), model, x)
    )(schedules)
    for k, shift in enumerate((1.0, 3.0)):
        one = jaxsched.FlowMatchEulerDiscreteScheduler(shift=shift)
        grid_shifted = sched.init(8, SHAPE, schedule=jaxsched.flow_schedule(shift=shift))
        np.testing.assert_allclose(grid_shifted.timesteps, one.init(8, SHAPE).timesteps, rtol=1e-6)
        expected = jaxsched.sample(sched, grid_shifted, model, x)
        np.testing.assert_allclose(runs[k], expected, rtol=1e-5, atol=1e-5)
    dynamic = jaxsched.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    mus = jnp.array([0.5, 1.15])
    traced = jax.vmap(lambda mu: dynamic.init(8, SHAPE, mu=mu).timesteps)(mus)
    for k, mu in enumerate((0.5, 1.15)):
        np.testing.assert_allclose(traced[k], dynamic.init(8, SHAPE, mu=mu).timesteps, rtol=1e-5)


@pytest.mark.parametrize(
    ("config", "init", "error", "fragment"),
    [
        ({"use_dynamic_shifting": True}, {}, ValueError, "needs mu at init"),
        ({}, {"mu": 0.5}, ValueError, "mu is only used with use_dynamic_shifting"),
        ({"use_dynamic_shifting": True}, {"mu": float("nan")}, ValueError, "mu must be finite"),
        (
            {"use_dynamic_shifting": True, "time_shift_type": "linear"},
            {"mu": -1.0},
            ValueError,
            "mu must be a finite number > 0",
        ),
        ({}, {"sigmas": [1.0, 0.5], "timesteps": [900.0]}, ValueError, "differ in length"),
        ({}, {"sigmas": [0.5, 0.9]}, ValueError, "descending"),
        ({}, {"sigmas": [1.5, 0.5]}, ValueError, "at most sigma_max"),
        ({}, {"sigmas": ["a"]}, TypeError, "sigmas must be a 1-D array of floats"),
    ],
)
def test_bad_grid_arguments_name_the_argument(config, init, error, fragment):
    sched = jaxsched.FlowMatchEulerDiscreteScheduler(**config)
    with pytest.raises(error, match=fragment):
        sched.init(init.pop("n", None if "sigmas" in init else 5), SHAPE, **init)


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("shift", 0.0, "shift must lie in"),
        ("time_shift_type", "cosine", "time_shift_type must be one of"),
        ("shift_terminal", 1.0, "shift_terminal must lie in"),
        ("use_karras_sigmas", "yes", "use_karras_sigmas must be a bool"),
        ("invert_sigmas", 1, "invert_sigmas must be a bool"),
        ("base_image_seq_len", 0, "base_image_seq_len must be >= 1"),
    ],
)
def test_bad_options_name_the_option(option, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        jaxsched.FlowMatchEulerDiscreteScheduler(**{option: value})


def test_two_spacings_and_a_stochastic_inverse_are_refused():
    with pytest.raises(ValueError, match="only one of use_karras_sigmas"):
        jaxsched.FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'stochastic_sampling'"):
        jaxsched.FlowMatchEulerInverseScheduler(stochastic_sampling=True)
    inverse = jaxsched.FlowMatchEulerDiscreteScheduler(stochastic_sampling=True).inverse()
    assert not inverse.capabilities.stochastic  # the option is dropped without a word


def test_unused_diffusers_step_arguments_are_refused():
    """diffusers' step takes s_churn, s_tmin, s_tmax and s_noise and ignores them."""
    sched = jaxsched.FlowMatchEulerDiscreteScheduler()
    state = sched.init(4, SHAPE)
    x = jnp.ones(SHAPE)
    with pytest.raises(TypeError, match=r"takes no argument\(s\) \['s_churn'\]"):
        sched.step(state, x, state.timesteps[0], x, s_churn=0.5)


def test_invert_sigmas_walks_toward_noise_and_the_inverse_class_walks_back():
    forward = jaxsched.FlowMatchEulerDiscreteScheduler(shift=3.0)
    inverse = forward.inverse()
    assert type(inverse).__name__ == "FlowMatchEulerInverseScheduler"
    assert inverse.inverse() == forward
    assert jaxsched.FlowMatchEulerDiscreteScheduler(invert_sigmas=True).capabilities.direction == (
        "to_noise"
    )
    sigmas = np.asarray(forward.grid(6).sigmas)
    np.testing.assert_array_equal(np.asarray(inverse.grid(6).sigmas), sigmas[::-1])
    np.testing.assert_array_equal(
        np.asarray(inverse.init(6, SHAPE).timesteps), sigmas[::-1][:-1] * np.float32(1000)
    )


# -- FlowMatchHeunDiscreteScheduler ---------------------------------------------------------------

HEUN = "FlowMatchHeunDiscreteScheduler"
HEUN_CASES = [
    ({}, {}),
    ({"shift": 3.0}, {}),
    ({"num_train_timesteps": 100, "shift": 2.0}, {}),
    ({"shift": 3.0}, {"s_churn": 1.0, "s_tmin": 0.2, "s_tmax": 0.9}),
    ({}, {"s_churn": 40.0, "s_noise": 1.003}),
]


def _run_heun_side_by_side(config: dict, churn: dict, n: int, begin_index: int | None = None):
    """Yield ``(i, ours, theirs)`` after every model call of both Heun schedulers."""
    ref = getattr(diffusers, HEUN)(**config)
    ref.set_timesteps(n)
    assert len(ref.timesteps) == 2 * n - 1
    sched = jaxsched.FlowMatchHeunDiscreteScheduler(**config)
    state = sched.init(n, SHAPE, begin_index=begin_index)
    # Under jit a passed s_churn is traced, so the step may draw: it takes noise.
    yield from _step_both(ref, sched, state, churn, "s_churn" in churn, begin_index)


@pytest.mark.parametrize("case", HEUN_CASES, ids=[_ids(c) for c in HEUN_CASES])
@pytest.mark.parametrize("n", [1, 4, 25])
def test_heun_every_call_matches_diffusers(case, n):
    config, churn = case
    calls = 0
    for i, ours, theirs in _run_heun_side_by_side(config, churn, n):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=f"call {i}")
        calls += 1
    assert calls == 2 * n - 1


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_heun_img2img_matches_diffusers(strength):
    sched = jaxsched.FlowMatchHeunDiscreteScheduler(shift=3.0)
    begin = jaxsched.begin_index_for_strength(sched, 10, strength)
    assert begin % 2 == 0
    calls = 0
    for i, ours, theirs in _run_heun_side_by_side({"shift": 3.0}, {}, 10, begin_index=begin):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=f"call {i}")
        calls += 1
    assert calls == 19 - begin


def test_heun_refuses_what_diffusers_set_timesteps_does_not_take_and_mid_step_starts():
    sched = jaxsched.FlowMatchHeunDiscreteScheduler()
    with pytest.raises(ValueError, match="takes no custom sigmas"):
        sched.init(None, SHAPE, sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="begin_index=3 is inside a step"):
        sched.init(5, SHAPE, begin_index=3)
    state = sched.init(5, SHAPE)
    x = jnp.ones(SHAPE)
    with pytest.raises(ValueError, match="s_churn must lie in"):
        sched.step(state, x, state.timesteps[0], x, s_churn=-1.0)
    with pytest.raises(ValueError, match="this step is stochastic"):
        sched.step(state, x, state.timesteps[0], x, s_churn=0.5)
    assert sched.capabilities.model_calls_per_step == 2


def test_heun_whole_loop_with_traced_churn_matches_the_step_loop():
    sched = jaxsched.FlowMatchHeunDiscreteScheduler(shift=3.0)
    state = sched.init(6, SHAPE)
    x = jax.random.normal(jax.random.key(0), SHAPE)
    noise = jax.random.normal(jax.random.key(1), (11, *SHAPE))

    def model(x, t):
        return 0.6 * jnp.tanh(x) - 0.3 + 1e-4 * t

    run = jax.jit(lambda churn: jaxsched.sample(sched, state, model, x, s_churn=churn, noise=noise))
    eager_state, eager = state, x
    for i in range(11):
        t = eager_state.timesteps[i]
        eager_state, eager = sched.step(
            eager_state, model(eager, t), t, eager, s_churn=2.0, noise=noise[i]
        )
    np.testing.assert_allclose(run(2.0), eager, rtol=1e-5, atol=1e-5)
    assert not np.allclose(run(0.0), eager)  # the churn is traced, and it matters


@settings(max_examples=20, deadline=None)
@given(
    shift=st.sampled_from([1.0, 1.7, 3.0, 6.0]),
    dynamic=st.sampled_from([None, "exponential", "linear"]),
    terminal=st.sampled_from([None, 0.02, 0.3]),
    spacing=st.sampled_from([None, "use_karras_sigmas", "use_exponential_sigmas"]),
    invert=st.booleans(),
    stochastic=st.booleans(),
    n=st.integers(2, 30),
    train=st.sampled_from([1000, 250]),
)
def test_random_configurations_match_diffusers(
    shift, dynamic, terminal, spacing, invert, stochastic, n, train
):
    """A randomized differential test: any combination of the options, step by step."""
    config = {
        "shift": shift,
        "shift_terminal": terminal,
        "invert_sigmas": invert,
        "stochastic_sampling": stochastic,
        "num_train_timesteps": train,
    }
    kwargs = {}
    if dynamic is not None:
        config |= {"use_dynamic_shifting": True, "time_shift_type": dynamic}
        kwargs["mu"] = 0.8 if dynamic == "exponential" else 2.0
    if spacing is not None:
        config[spacing] = True
    steps = 0
    for i, ours, theirs in _run_side_by_side(config, kwargs, n):
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5, err_msg=f"step {i}")
        steps += 1
    assert steps == n


@settings(max_examples=10, deadline=None)
@given(
    shift=st.sampled_from([1.0, 1.7, 3.0, 6.0]),
    train=st.sampled_from([1000, 250]),
    n=st.integers(1, 20),
    churn=st.sampled_from([0.0, 0.5, 5.0, 40.0]),
    window=st.sampled_from([(0.0, float("inf")), (0.2, 0.9), (0.5, 0.6)]),
    s_noise=st.sampled_from([1.0, 1.003, 0.9]),
    strength=st.sampled_from([None, 0.3, 0.7]),
)
def test_random_heun_configurations_match_diffusers(
    shift, train, n, churn, window, s_noise, strength
):
    """The randomized differential test for Heun: options, churn window and img2img start,
    every model call against diffusers'."""
    assume(strength is None or int(n * strength) >= 1)  # img2img keeps at least one step
    config = {"shift": shift, "num_train_timesteps": train}
    step_args = {"s_churn": churn, "s_tmin": window[0], "s_tmax": window[1], "s_noise": s_noise}
    sched = jaxsched.FlowMatchHeunDiscreteScheduler(**config)
    begin = None if strength is None else jaxsched.begin_index_for_strength(sched, n, strength)
    calls = 0
    for i, ours, theirs in _run_heun_side_by_side(config, step_args, n, begin_index=begin):
        np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-5, err_msg=f"call {i}")
        calls += 1
    assert calls == 2 * n - 1 - (begin or 0)
