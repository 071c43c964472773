"""Every error path of the public API: the exception type and a message naming the problem,
each next to the same call succeeding with valid input."""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsched

SHAPE = (2, 3)
SCHEDULERS = [jaxsched.DDIMScheduler, jaxsched.DDIMInverseScheduler]
#: Every registered scheduler: the checks written once in the core hold for each.
REGISTERED = list(jaxsched.SCHEDULERS.values())
VP_REGISTERED = [cls for cls in REGISTERED if cls.training_levels == "vp"]
FLOW_REGISTERED = [cls for cls in REGISTERED if cls.training_levels == "flow"]


def _training_schedules(cls, values: jax.Array):
    """A batch of training schedules of ``cls``'s kind, one per value (a beta start or a
    shift)."""
    if cls.training_levels == "flow":
        return jax.vmap(lambda v: jaxsched.flow_schedule(shift=1.0 + v))(values)
    return jax.vmap(lambda v: jaxsched.noise_schedule(beta_start=v))(values)


def _inputs(shape=SHAPE):
    x = jnp.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=jnp.float32).reshape(shape)
    return x, 0.1 * x + 0.05


def _run_all_steps(sched, state, x, eps):
    for _ in range(state.num_inference_steps):
        state, x = sched.step(state, eps, state.timesteps[state.step_index], x)
    return state, x


# -- construction --------------------------------------------------------------------------

# (option, bad value, fragment of the message, classes that have the option)
BAD_VALUES = [
    ("beta_schedule", "cosine", "beta_schedule must be one of", SCHEDULERS),
    ("prediction_type", "eps", "prediction_type must be one of", SCHEDULERS),
    ("timestep_spacing", "uniform", "timestep_spacing must be one of", SCHEDULERS),
    ("dynamic_thresholding_ratio", 1.5, "dynamic_thresholding_ratio must lie in", SCHEDULERS[:1]),
    ("dynamic_thresholding_ratio", -0.1, "dynamic_thresholding_ratio must lie in", SCHEDULERS[:1]),
    ("sample_max_value", 0.0, "sample_max_value must lie in", SCHEDULERS[:1]),
    ("sample_max_value", -1.0, "sample_max_value must lie in", SCHEDULERS[:1]),
    ("clip_sample_range", 0.0, "clip_sample_range must lie in", SCHEDULERS),
    ("clip_sample_range", -2.0, "clip_sample_range must lie in", SCHEDULERS),
    ("steps_offset", -1, "steps_offset must be >= 0", SCHEDULERS),
    ("num_train_timesteps", 0, "num_train_timesteps must be >= 1", SCHEDULERS),
    ("num_train_timesteps", -5, "num_train_timesteps must be >= 1", SCHEDULERS),
    ("beta_start", 1.0, "beta_start must lie in", SCHEDULERS),
    ("beta_start", 1.5, "beta_start must lie in", SCHEDULERS),
    ("beta_start", -0.1, "beta_start must lie in", SCHEDULERS),
    ("beta_start", float("nan"), "beta_start must lie in", SCHEDULERS),
    ("beta_end", 1.5, "beta_end must lie in", SCHEDULERS),
    ("beta_end", -0.1, "beta_end must lie in", SCHEDULERS),
    ("trained_betas", [0.01] * 10, "trained_betas has 10 entries", SCHEDULERS),
    ("trained_betas", np.full(999, 0.01), "trained_betas has 999 entries", SCHEDULERS),
]

# (option, value of the wrong type, fragment of the message, classes that have the option)
BAD_TYPES = [
    ("clip_sample", "yes", "clip_sample must be a bool", SCHEDULERS),
    ("clip_sample", 1, "clip_sample must be a bool", SCHEDULERS),
    ("set_alpha_to_one", None, "set_alpha_to_one must be a bool", SCHEDULERS),
    ("rescale_betas_zero_snr", "no", "rescale_betas_zero_snr must be a bool", SCHEDULERS),
    ("thresholding", 1, "thresholding must be a bool", SCHEDULERS[:1]),
    ("steps_offset", 1.5, "steps_offset must be an int", SCHEDULERS),
    ("steps_offset", True, "steps_offset must be an int", SCHEDULERS),
    ("num_train_timesteps", 1000.0, "num_train_timesteps must be an int", SCHEDULERS),
    ("num_train_timesteps", "1000", "num_train_timesteps must be an int", SCHEDULERS),
    ("beta_start", "0.001", "beta_start must be a real number", SCHEDULERS),
    ("clip_sample_range", True, "clip_sample_range must be a real number", SCHEDULERS),
    ("sample_max_value", None, "sample_max_value must be a real number", SCHEDULERS[:1]),
]

# Valid values of every option above: construction succeeds with them.
GOOD_VALUES = {
    "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
    "prediction_type": ["epsilon", "sample", "v_prediction"],
    "timestep_spacing": ["leading", "trailing", "linspace"],
    "dynamic_thresholding_ratio": [0.0, 0.5, 1.0],
    "sample_max_value": [1e-3, 1.0, 5],
    "clip_sample_range": [1e-3, 1.0, 3],
    "steps_offset": [0, 1, np.int64(2)],
    "num_train_timesteps": [1, 1000, np.int32(500)],
    "beta_start": [0.0, 1e-4, 0.5],
    "beta_end": [0.0, 0.02, 0.999],
    "clip_sample": [True, False, np.bool_(True)],
    "set_alpha_to_one": [True, False],
    "rescale_betas_zero_snr": [True, False],
    "thresholding": [True, False],
}


def _cases(table):
    return [
        pytest.param(cls, option, value, fragment, id=f"{cls.__name__}-{option}={value!r}"[:80])
        for option, value, fragment, classes in table
        for cls in classes
    ]


@pytest.mark.parametrize(("cls", "option", "value", "fragment"), _cases(BAD_VALUES))
def test_bad_option_value_raises_value_error(cls, option, value, fragment):
    with pytest.raises(ValueError, match=fragment):
        cls(**{option: value})


@pytest.mark.parametrize(("cls", "option", "value", "fragment"), _cases(BAD_TYPES))
def test_bad_option_type_raises_type_error(cls, option, value, fragment):
    with pytest.raises(TypeError, match=fragment):
        cls(**{option: value})


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize("option", sorted(GOOD_VALUES))
def test_good_option_values_construct(cls, option):
    if option not in {f.name for f in dataclasses.fields(cls)}:
        # The inverse scheduler has no thresholding options: an unknown keyword.
        with pytest.raises(TypeError, match=option):
            cls(**{option: GOOD_VALUES[option][0]})
        return
    for value in GOOD_VALUES[option]:
        sched = cls(**{option: value})
        assert getattr(sched, option) == value
        hash(sched)


def test_bad_value_message_lists_allowed_values():
    with pytest.raises(ValueError, match=r"\['epsilon', 'sample', 'v_prediction'\]"):
        jaxsched.DDIMScheduler(prediction_type="flow")


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_trained_betas_of_right_length_construct(cls):
    sched = cls(num_train_timesteps=10, trained_betas=[0.01] * 10)
    assert sched.trained_betas == (0.01,) * 10


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
def test_replace_validates_again(cls):
    sched = cls()
    assert sched.replace(num_train_timesteps=500).num_train_timesteps == 500
    with pytest.raises(ValueError, match="num_train_timesteps must be >= 1"):
        sched.replace(num_train_timesteps=0)
    with pytest.raises(TypeError, match="num_train_timesteps must be an int"):
        sched.replace(num_train_timesteps="1000")


# -- init ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
def test_init_num_inference_steps(cls):
    sched = cls()

    def calls(n: int) -> tuple[int]:  # one timestep per model call (Heun: two per step)
        return ((n - 1) * cls.order + 1,)

    assert sched.init(1, SHAPE).timesteps.shape == calls(1)
    assert sched.init(1000, SHAPE).timesteps.shape == calls(1000)
    assert sched.init(np.int64(7), SHAPE).timesteps.shape == calls(7)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        sched.init(0, SHAPE)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        sched.init(-3, SHAPE)
    with pytest.raises(ValueError, match=r"num_inference_steps=1001 cannot exceed"):
        sched.init(1001, SHAPE)
    with pytest.raises(ValueError, match=r"num_inference_steps=11 cannot exceed.*=10"):
        cls(num_train_timesteps=10).init(11, SHAPE)
    for bad in (10.0, "10", True, None):
        with pytest.raises(TypeError, match="num_inference_steps must be an int"):
            sched.init(bad, SHAPE)


@pytest.mark.parametrize("cls", VP_REGISTERED, ids=lambda cls: cls.__name__)
def test_init_schedule_argument(cls):
    sched = cls()
    good = jaxsched.noise_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012)
    state = sched.init(10, SHAPE, schedule=good)
    np.testing.assert_array_equal(state.schedule.betas, good.betas)

    short = jaxsched.noise_schedule("linear", num_train_timesteps=500)
    with pytest.raises(ValueError, match=r"schedule arrays have shape \(500,\).*=1000"):
        sched.init(10, SHAPE, schedule=short)
    assert cls(num_train_timesteps=500).init(10, SHAPE, schedule=short).timesteps.shape == (10,)

    for bad in (tuple(good), good._asdict(), good.alphas_cumprod):
        with pytest.raises(TypeError, match=r"schedule must be a jaxsched\.NoiseSchedule"):
            sched.init(10, SHAPE, schedule=bad)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_init_steps_offset_past_last_timestep(cls):
    with pytest.raises(ValueError, match=r"steps_offset=1 .* outside 0\.\.999"):
        cls(steps_offset=1).init(1000, SHAPE)
    with pytest.raises(ValueError, match=r"steps_offset=5 .* outside 0\.\.99"):
        cls(steps_offset=5, num_train_timesteps=100).init(20, SHAPE)
    # The same offset with fewer steps stays inside the training range.
    state = cls(steps_offset=1).init(50, SHAPE)
    assert int(state.timesteps.max()) == 981
    assert int(state.timesteps.min()) == 1
    assert cls(steps_offset=0).init(1000, SHAPE).timesteps.shape == (1000,)


# -- step -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", FLOW_REGISTERED, ids=lambda cls: cls.__name__)
def test_init_flow_schedule_argument(cls):
    sched = cls(shift=3.0)
    good = jaxsched.flow_schedule(shift=3.0)
    np.testing.assert_array_equal(
        sched.init(10, SHAPE, schedule=good).timesteps, sched.init(10, SHAPE).timesteps
    )
    with pytest.raises(ValueError, match=r"schedule.sigmas has shape \(500,\).*=1000"):
        sched.init(10, SHAPE, schedule=jaxsched.flow_schedule(500))
    for bad in (jaxsched.noise_schedule(), good.sigmas, tuple(good)):
        with pytest.raises(TypeError, match=r"schedule must be a jaxsched\.FlowSchedule"):
            sched.init(10, SHAPE, schedule=bad)


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
def test_step_shape_mismatches(cls):
    sched = cls()
    state = sched.init(5, SHAPE)
    x, eps = _inputs()
    t = state.timesteps[0]

    new_state, x_next = sched.step(state, eps, t, x)
    assert x_next.shape == SHAPE
    assert int(new_state.step_index) == 1

    with pytest.raises(ValueError, match=r"model_output has shape \(2, 4\) but the sample"):
        sched.step(state, jnp.zeros((2, 4)), t, x)
    with pytest.raises(ValueError, match=r"model_output has shape \(3, 2\)"):
        sched.step(state, eps.reshape(3, 2), t, x)

    other_x, other_eps = _inputs((4, 3))
    with pytest.raises(ValueError, match=r"state was initialised for shape \(2, 3\)"):
        sched.step(state, other_eps, t, other_x)
    # Initialised for (4, 3), the same call succeeds.
    _, y = sched.step(sched.init(5, (4, 3)), other_eps, t, other_x)
    assert y.shape == (4, 3)


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
def test_step_wrong_timestep(cls):
    sched = cls()
    state = sched.init(5, SHAPE)
    x, eps = _inputs()
    right = state.timesteps[0]
    wrong = state.timesteps[1]

    # The right t, as an array or a Python number, is accepted.
    sched.step(state, eps, right, x)
    state1, x1 = sched.step(state, eps, right.item(), x)

    shown = re.escape(str(np.asarray(wrong)))
    with pytest.raises(ValueError, match=rf"t={shown} is not the state's current timestep"):
        sched.step(state, eps, wrong, x)
    with pytest.raises(ValueError, match=r"pass state\.timesteps\[state\.step_index\]"):
        sched.step(state, eps, right.item() + 1, x)
    # After one step the current timestep is timesteps[1]; timesteps[0] is now wrong.
    sched.step(state1, eps, state1.timesteps[1], x1)
    with pytest.raises(ValueError, match=rf"\(step 1 of {state.num_inference_steps}\)"):
        sched.step(state1, eps, right, x1)


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
def test_step_past_the_end_eager(cls):
    sched = cls()
    x, eps = _inputs()
    state, x = _run_all_steps(sched, sched.init(3, SHAPE), x, eps)
    calls = state.num_inference_steps  # 3 (Heun: 5 model calls)
    assert int(state.step_index) == calls
    assert bool(jnp.isfinite(x).all())
    with pytest.raises(ValueError, match=f"already taken all {calls} steps"):
        sched.step(state, eps, state.timesteps[-1], x)


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
def test_step_past_the_end_under_jit_is_nan(cls):
    sched = cls()
    x, eps = _inputs()
    step = jax.jit(sched.step)

    # Inside the run, the jitted step agrees with the eager one and is finite.
    state = sched.init(3, SHAPE)
    jit_state, jit_x = step(state, eps, state.timesteps[0], x)
    _, eager_x = sched.step(state, eps, state.timesteps[0], x)
    assert bool(jnp.isfinite(jit_x).all())
    assert int(jit_state.step_index) == 1
    np.testing.assert_allclose(jit_x, eager_x, rtol=1e-5, atol=1e-5)

    state, x = _run_all_steps(sched, state, x, eps)
    over_state, over_x = step(state, eps, state.timesteps[-1], x)
    assert over_x.shape == SHAPE
    assert bool(jnp.isnan(over_x).all())
    assert bool(jnp.isnan(over_state.pred_original_sample).all())
    assert int(over_state.step_index) == state.num_inference_steps + 1


def test_step_eta_needs_key_or_noise():
    sched = jaxsched.DDIMScheduler()
    state = sched.init(5, SHAPE)
    x, eps = _inputs()
    t = state.timesteps[0]
    key = jax.random.key(0)

    # eta = 0 is deterministic: no key needed.
    sched.step(state, eps, t, x, eta=0.0)
    _, with_key = sched.step(state, eps, t, x, eta=0.5, key=key)
    _, with_noise = sched.step(state, eps, t, x, eta=0.5, noise=jnp.ones(SHAPE))
    assert bool(jnp.isfinite(with_key).all())
    assert bool(jnp.isfinite(with_noise).all())

    with pytest.raises(ValueError, match="this step is stochastic: pass key="):
        sched.step(state, eps, t, x, eta=0.5)
    with pytest.raises(ValueError, match="this step is stochastic"):
        sched.step(state, eps, t, x, eta=jnp.float32(1.0))


def test_step_traced_eta_needs_key_or_noise():
    sched = jaxsched.DDIMScheduler()
    state = sched.init(5, SHAPE)
    x, eps = _inputs()
    t = state.timesteps[0]

    @jax.jit
    def with_key(state, eps, t, x, eta, key):
        return sched.step(state, eps, t, x, eta=eta, key=key)

    @jax.jit
    def without(state, eps, t, x, eta):
        return sched.step(state, eps, t, x, eta=eta)

    key = jax.random.key(1)
    _, traced = with_key(state, eps, t, x, 0.5, key)
    _, eager = sched.step(state, eps, t, x, eta=0.5, key=key)
    np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-6)

    # A traced eta might be > 0, so the step must be able to draw noise.
    with pytest.raises(ValueError, match="this step is stochastic"):
        without(state, eps, t, x, 0.0)
    with pytest.raises(ValueError, match="this step is stochastic"):
        jax.jit(sched.step)(state, eps, t, x, eta=0.5)


def test_step_key_and_noise_and_noise_shape():
    sched = jaxsched.DDIMScheduler()
    state = sched.init(5, SHAPE)
    x, eps = _inputs()
    t = state.timesteps[0]
    key = jax.random.key(2)
    noise = jax.random.normal(key, SHAPE)

    _, from_noise = sched.step(state, eps, t, x, eta=1.0, noise=noise)
    _, from_key = sched.step(state, eps, t, x, eta=1.0, key=key)
    np.testing.assert_allclose(from_noise, from_key, rtol=1e-6, atol=1e-6)

    with pytest.raises(ValueError, match="either key or noise to a stochastic step, not both"):
        sched.step(state, eps, t, x, eta=1.0, key=key, noise=noise)
    with pytest.raises(ValueError, match=r"noise has shape \(3, 2\), expected \(2, 3\)"):
        sched.step(state, eps, t, x, eta=1.0, noise=noise.reshape(3, 2))
    with pytest.raises(ValueError, match=r"noise has shape \(6,\), expected \(2, 3\)"):
        sched.step(state, eps, t, x, eta=1.0, noise=noise.ravel())


def test_step_eta_outside_zero_one():
    sched = jaxsched.DDIMScheduler()
    state = sched.init(5, SHAPE)
    x, eps = _inputs()
    t = state.timesteps[0]
    key = jax.random.key(3)
    sched.step(state, eps, t, x, eta=0.0, key=key)
    for eta in (-0.1, -1, jnp.float32(-0.5), 1.01, 2):
        with pytest.raises(ValueError, match=r"eta must lie in \[0.0, 1.0\]"):
            sched.step(state, eps, t, x, eta=eta, key=key)


# -- sample ----------------------------------------------------------------------------------


def _model(x, t):
    return 0.1 * x + 0.001 * t.astype(x.dtype)


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
def test_sample_with_exhausted_state(cls):
    sched = cls()
    x, _ = _inputs()
    state = sched.init(4, SHAPE)
    final_state, out = jaxsched.sample(sched, state, _model, x, return_state=True)
    assert out.shape == SHAPE
    assert bool(jnp.isfinite(out).all())
    assert int(final_state.step_index) == state.num_inference_steps
    with pytest.raises(ValueError, match=f"already taken all {state.num_inference_steps} steps"):
        jaxsched.sample(sched, final_state, _model, out)

    # A partly used state runs its remaining steps.
    state1, x1 = sched.step(state, _model(x, state.timesteps[0]), state.timesteps[0], x)
    np.testing.assert_allclose(jaxsched.sample(sched, state1, _model, x1), out, rtol=1e-5)


def test_sample_key_and_noise():
    sched = jaxsched.DDIMScheduler()
    x, _ = _inputs()
    state = sched.init(4, SHAPE)
    key = jax.random.key(4)
    noise = jax.random.normal(key, (4, *SHAPE))

    from_key = jaxsched.sample(sched, state, _model, x, key=key, eta=1.0)
    from_noise = jaxsched.sample(sched, state, _model, x, noise=noise, eta=1.0)
    assert bool(jnp.isfinite(from_key).all())
    assert bool(jnp.isfinite(from_noise).all())

    with pytest.raises(ValueError, match="either key or noise to sample, not both"):
        jaxsched.sample(sched, state, _model, x, key=key, noise=noise, eta=1.0)
    with pytest.raises(ValueError, match=r"noise must have shape \(4, 2, 3\).*got \(3, 2, 3\)"):
        jaxsched.sample(sched, state, _model, x, noise=noise[:3], eta=1.0)
    with pytest.raises(ValueError, match=r"noise must have shape \(4, 2, 3\).*got \(2, 3\)"):
        jaxsched.sample(sched, state, _model, x, noise=noise[0], eta=1.0)
    # Stochastic sampling with neither key nor noise fails in the step.
    with pytest.raises(ValueError, match="this step is stochastic"):
        jaxsched.sample(sched, state, _model, x, eta=1.0)


# -- from_config -----------------------------------------------------------------------------


def test_from_config_unknown_class():
    assert isinstance(
        jaxsched.from_config({"_class_name": "DDIMScheduler"}), jaxsched.DDIMScheduler
    )
    with pytest.raises(ValueError, match="unknown scheduler class 'PNDMScheduler'"):
        jaxsched.from_config({"_class_name": "PNDMScheduler"})
    with pytest.raises(ValueError, match=r"unknown scheduler class 'Nope'; available: \["):
        jaxsched.from_config({"_class_name": "DDIMScheduler"}, cls="Nope")
    with pytest.raises(TypeError, match="cls must be a scheduler class or its name"):
        jaxsched.from_config({}, cls=dict)


def test_from_config_without_class_name():
    assert isinstance(jaxsched.from_config({}, cls="DDIMScheduler"), jaxsched.DDIMScheduler)
    with pytest.raises(ValueError, match="the config has no _class_name; pass cls="):
        jaxsched.from_config({"steps_offset": 1})
    with pytest.raises(ValueError, match="no _class_name"):
        jaxsched.from_config({})


def test_from_config_missing_path(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    assert isinstance(jaxsched.from_config(path), jaxsched.DDIMScheduler)
    assert isinstance(jaxsched.from_config(tmp_path), jaxsched.DDIMScheduler)

    with pytest.raises(FileNotFoundError, match="no scheduler config at"):
        jaxsched.from_config(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="no scheduler config at"):
        jaxsched.from_config(str(tmp_path / "nowhere" / "scheduler_config.json"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"scheduler_config\.json"):
        jaxsched.from_config(empty)


def test_from_config_json_not_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="does not hold a JSON object"):
        jaxsched.from_config(path)


def test_from_config_invalid_json_and_wrong_source_type(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        jaxsched.from_config(path)
    with pytest.raises(TypeError, match="a mapping, a JSON file or a directory, got 42"):
        jaxsched.from_config(42)


def test_from_config_bad_option_values_fail_like_construction():
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        jaxsched.from_config({"_class_name": "DDIMScheduler", "prediction_type": "eps"})
    with pytest.raises(TypeError, match="steps_offset must be an int"):
        jaxsched.from_config({"_class_name": "DDIMInverseScheduler", "steps_offset": 1.5})


# -- inputs found by review: each must fail loudly, not quietly -------------------------------


@pytest.mark.parametrize(
    ("eta", "error", "fragment"),
    [
        (float("nan"), ValueError, r"eta must lie in \[0.0, 1.0\]"),
        (float("inf"), ValueError, r"eta must lie in \[0.0, 1.0\]"),
        (1j, TypeError, "eta must be a real scalar"),
        (None, TypeError, "eta must be a real scalar"),
        (jnp.ones(2), TypeError, "eta must be a real scalar"),
    ],
)
def test_step_rejects_bad_eta(eta, error, fragment):
    sched = jaxsched.DDIMScheduler()
    state = sched.init(5, SHAPE)
    x, eps = _inputs()
    with pytest.raises(error, match=fragment):
        sched.step(state, eps, state.timesteps[0], x, eta=eta, key=jax.random.key(0))
    sched.step(state, eps, state.timesteps[0], x, eta=np.float32(0.5), key=jax.random.key(0))


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
def test_integer_samples_and_dtypes_are_rejected(cls):
    sched = cls()
    with pytest.raises(TypeError, match="dtype must have a floating-point dtype"):
        sched.init(5, SHAPE, jnp.int32)
    state = sched.init(5, SHAPE)
    x, eps = _inputs()
    with pytest.raises(TypeError, match="the sample must have a floating-point dtype"):
        sched.step(state, eps, state.timesteps[0], x.astype(jnp.int32))
    with pytest.raises(TypeError, match="model_output must have a floating-point dtype"):
        sched.step(state, eps.astype(jnp.int32), state.timesteps[0], x)


@pytest.mark.parametrize("cls", REGISTERED, ids=lambda cls: cls.__name__)
def test_batched_state_outside_vmap_is_rejected(cls):
    sched = cls()
    schedules = _training_schedules(cls, jnp.array([1e-4, 2e-4]))
    states = jax.vmap(lambda schedule: sched.init(5, SHAPE, schedule=schedule))(schedules)
    x, eps = _inputs()
    xs, epss = jnp.stack([x, x]), jnp.stack([eps, eps])
    with pytest.raises(ValueError, match="the state is batched"):
        sched.step(states, epss, states.timesteps[:, 0], xs)
    with pytest.raises(ValueError, match="the state is batched"):
        jaxsched.sample(sched, states, _model, xs)
    _, out = jax.vmap(sched.step)(states, epss, states.timesteps[:, 0], xs)
    assert out.shape == xs.shape


@pytest.mark.parametrize(
    "betas", [[0.5] * 999 + [1.0], [float("nan")] * 1000, [[0.01] * 500] * 2, [-0.1] * 1000]
)
def test_trained_betas_out_of_range_are_rejected(betas):
    with pytest.raises(ValueError, match=r"trained_betas must be (a )?1-D"):
        jaxsched.DDIMScheduler(trained_betas=betas)


def test_numpy_scalar_options_serialise(tmp_path):
    sched = jaxsched.DDIMScheduler(
        num_train_timesteps=np.int32(500), beta_start=np.float32(1e-4), clip_sample=np.bool_(False)
    )
    assert type(sched.num_train_timesteps) is int and type(sched.clip_sample) is bool
    assert jaxsched.from_config(sched.save_config(tmp_path)) == sched


def test_type_errors_are_also_value_errors():
    with pytest.raises(ValueError, match="steps_offset must be an int"):
        jaxsched.DDIMScheduler(steps_offset=1.5)


def test_add_noise_rejects_out_of_range_timesteps_and_is_nan_when_traced():
    sched = jaxsched.DDIMScheduler()
    state = sched.init(5, SHAPE)
    x, eps = _inputs()
    for t in (1000, -1, np.array([0, 1000])):
        with pytest.raises(ValueError, match=r"timesteps must lie in 0..999"):
            sched.add_noise(state, x, eps, t)
    traced = jax.jit(sched.add_noise)(state, x, eps, 1000)
    assert bool(jnp.isnan(traced).all())
    assert bool(jnp.isfinite(jax.jit(sched.add_noise)(state, x, eps, 999)).all())


def test_schedule_with_integer_dtype_is_rejected():
    with pytest.raises(TypeError, match="noise_schedule dtype must have a floating-point dtype"):
        jaxsched.noise_schedule(dtype=jnp.int32)


@pytest.mark.parametrize(("beta_start", "beta_end"), [(0.5, 1.5), (-0.2, 0.02)])
def test_noise_schedule_rejects_betas_outside_the_unit_interval(beta_start, beta_end):
    jaxsched.noise_schedule(beta_start=0.0001, beta_end=0.02)
    with pytest.raises(ValueError, match=r"beta_(start|end) must lie in \[0.0, 1.0\], got"):
        jaxsched.noise_schedule(beta_start=beta_start, beta_end=beta_end)


@pytest.mark.parametrize(
    "cls", [cls for name, cls in sorted(jaxsched.SCHEDULERS.items()) if "Multistep" in name]
)
def test_leading_spacing_with_a_zero_stride_is_rejected(cls):
    """DPM-Solver's leading stride is T // (N + 1): 0 at N = T, where diffusers runs N steps at
    one timestep. jaxsched raises; N = T - 1 still works."""
    sched = cls(timestep_spacing="leading")
    assert len(set(np.asarray(sched.init(999, (1,)).timesteps).tolist())) == 999
    with pytest.raises(ValueError, match=r"stride of 1000 // 1001 = 0"):
        sched.init(1000, (1,))


@pytest.mark.parametrize("cls", [jaxsched.DDIMScheduler, jaxsched.DPMSolverMultistepScheduler])
def test_leading_steps_offset_past_the_last_timestep_is_rejected_at_init(cls):
    """diffusers fails mid-run (an index past T - 1); jaxsched refuses the grid up front."""
    sched = cls(timestep_spacing="leading", steps_offset=1)
    n = 1000 if cls is jaxsched.DDIMScheduler else 999
    sched.init(n - 1, (1,))
    with pytest.raises(ValueError, match="1000"):
        sched.init(n, (1,))


def test_dpmsolver_pp_inversion_from_sigma_zero_is_rejected_and_noise_form_runs():
    """With beta_start=0 the inverse grid starts at sigma = 0, where the data-prediction step
    is inf - inf (diffusers returns NaN). The noise-form algorithm has the exact limit."""
    x, eps = _inputs()
    with pytest.raises(ValueError, match="starts at sigma = 0"):
        jaxsched.DPMSolverMultistepInverseScheduler(beta_start=0.0).init(10, SHAPE)
    noise_form = jaxsched.DPMSolverMultistepInverseScheduler(
        beta_start=0.0, algorithm_type="dpmsolver"
    )
    out = jaxsched.sample(noise_form, noise_form.init(10, SHAPE), lambda x, t: eps, x)
    assert bool(jnp.isfinite(out).all())


def test_a_model_output_that_is_not_an_array_is_a_clear_error():
    sched = jaxsched.DPMSolverMultistepScheduler()
    x, _ = _inputs()
    jaxsched.sample(sched, sched.init(3, SHAPE), lambda x, t: 0.5 * x, x)
    with pytest.raises(TypeError, match="model_output must be an array, got a tuple"):
        jaxsched.sample(sched, sched.init(3, SHAPE), lambda x, t: (0.5 * x,), x)
