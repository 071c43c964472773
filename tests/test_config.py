"""diffusers configs in and out: FrozenDicts, JSON files, directories, class conversion,
deprecated keys, ``inverse()`` and trained betas."""

from __future__ import annotations

import dataclasses
import json
import warnings

import diffusers
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsched

TRAINED_BETAS = np.linspace(1e-4, 0.02, 1000) ** 1.1

# Non-default values of options both classes have.
SHARED_OPTIONS = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="v_prediction",
    timestep_spacing="trailing",
)

# (diffusers class name, keyword arguments) for both libraries.
CONFIGS = [
    ("DDIMScheduler", {}),
    ("DDIMScheduler", dict(**SHARED_OPTIONS, rescale_betas_zero_snr=True)),
    (
        "DDIMScheduler",
        dict(
            num_train_timesteps=500,
            beta_schedule="squaredcos_cap_v2",
            thresholding=True,
            dynamic_thresholding_ratio=0.9,
            sample_max_value=2.0,
            clip_sample_range=1.5,
            prediction_type="sample",
            timestep_spacing="linspace",
        ),
    ),
    ("DDIMScheduler", dict(trained_betas=TRAINED_BETAS)),
    ("DDIMInverseScheduler", {}),
    ("DDIMInverseScheduler", SHARED_OPTIONS),
    ("DDIMInverseScheduler", dict(trained_betas=list(TRAINED_BETAS), clip_sample_range=2.0)),
]
CONFIG_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CONFIGS)]


def _plain(value):
    """A config value comparable with ==: arrays and tuples become lists."""
    if isinstance(value, (np.ndarray, tuple, list)):
        return [float(v) for v in np.asarray(value).ravel()]
    return value


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _assert_same_config(jax_config, diffusers_config):
    jax_config, diffusers_config = _public(jax_config), _public(diffusers_config)
    assert set(jax_config) == set(diffusers_config)
    for key, value in jax_config.items():
        assert _plain(value) == _plain(diffusers_config[key]), key


def _record(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, caught


# -- diffusers configs in --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_from_diffusers_config(name, kwargs):
    reference = getattr(diffusers, name)(**kwargs)
    config = reference.config
    # A FrozenDict with diffusers' bookkeeping key, which jaxsched must ignore silently.
    assert isinstance(config, diffusers.configuration_utils.FrozenDict)
    assert "_use_default_values" in config

    sched, caught = _record(jaxsched.from_config, config, cls=name)
    assert caught == []
    assert type(sched) is getattr(jaxsched, name)
    _assert_same_config(sched.config, config)
    hash(sched)
    # The same options given directly build an equal scheduler.
    assert sched == getattr(jaxsched, name)(**kwargs)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_from_diffusers_config_with_class_name(name, kwargs):
    # A config diffusers loaded itself carries _class_name: no cls= needed.
    reference = getattr(diffusers, name).from_config({"_class_name": name, **kwargs})
    assert reference.config["_class_name"] == name
    sched, caught = _record(jaxsched.from_config, reference.config)
    assert caught == []
    assert type(sched) is getattr(jaxsched, name)
    _assert_same_config(sched.config, reference.config)


def test_config_is_plain_dict_with_diffusers_keys():
    sched = jaxsched.DDIMScheduler(trained_betas=TRAINED_BETAS)
    config = sched.config
    assert isinstance(config, dict) and json.loads(json.dumps(config)) == config
    assert isinstance(config["trained_betas"], list)
    assert config["trained_betas"] == [float(b) for b in TRAINED_BETAS]
    assert set(config) == set(_public(diffusers.DDIMScheduler().config))
    assert set(jaxsched.DDIMInverseScheduler().config) == set(
        _public(diffusers.DDIMInverseScheduler().config)
    )


# -- unused keys -------------------------------------------------------------------------------


def test_keys_of_other_diffusers_schedulers_are_dropped_quietly_when_converting():
    """As diffusers does: the inverse has no thresholding options, and says nothing."""
    config = diffusers.DDIMScheduler(
        thresholding=True, sample_max_value=3.0, steps_offset=1, clip_sample=False
    ).config
    sched, caught = _record(jaxsched.from_config, config, cls="DDIMInverseScheduler")
    assert not caught, [str(w.message) for w in caught]
    assert isinstance(sched, jaxsched.DDIMInverseScheduler)
    assert sched.steps_offset == 1
    assert sched.clip_sample is False


def test_unused_made_up_keys_warn_once():
    config = {"_class_name": "DDIMScheduler", "foo": 1, "bar_baz": "x", "steps_offset": 2}
    sched, caught = _record(jaxsched.from_config, config)
    assert len(caught) == 1
    assert "['bar_baz', 'foo']" in str(caught[0].message)
    assert sched == jaxsched.DDIMScheduler(steps_offset=2)
    # The caller's dict is not modified.
    assert config == {"_class_name": "DDIMScheduler", "foo": 1, "bar_baz": "x", "steps_offset": 2}


def test_no_warning_when_every_key_is_used():
    config = diffusers.DDIMInverseScheduler(steps_offset=1).config
    # The inverse's keys are a subset of the forward scheduler's: nothing is unused.
    sched, caught = _record(jaxsched.from_config, config, cls="DDIMScheduler")
    assert caught == []
    assert sched == jaxsched.DDIMScheduler(steps_offset=1)


# -- cls= and sources --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [
        jaxsched.DDIMInverseScheduler,
        "DDIMInverseScheduler",
        jaxsched.DDIMScheduler,
        "DDIMScheduler",
    ],
)
def test_cls_accepts_class_or_name(cls):
    config = {"_class_name": "DDIMScheduler", "steps_offset": 1, "prediction_type": "sample"}
    sched = jaxsched.from_config(config, cls=cls)
    expected = cls if isinstance(cls, type) else getattr(jaxsched, cls)
    assert type(sched) is expected
    assert sched == expected(steps_offset=1, prediction_type="sample")


def test_from_json_path_and_directory(tmp_path):
    config = {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.42.1",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
    }
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(config))
    expected = jaxsched.DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
    )
    for source in (path, str(path), tmp_path, str(tmp_path)):
        sched, caught = _record(jaxsched.from_config, source)
        assert caught == []
        assert sched == expected
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps(config))
    assert jaxsched.from_config(other, cls="DDIMInverseScheduler") == expected.inverse()
    assert jaxsched.load_config(tmp_path) == config


# -- saving -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_save_config_round_trip(tmp_path, name, kwargs):
    sched = getattr(jaxsched, name)(**kwargs)
    path = sched.save_config(tmp_path / "model")
    assert path == tmp_path / "model" / "scheduler_config.json"

    loaded, caught = _record(jaxsched.from_config, tmp_path / "model")
    assert caught == []
    assert loaded == sched
    assert hash(loaded) == hash(sched)
    assert jaxsched.from_config(path) == sched

    saved = json.loads(path.read_text())
    assert saved["_class_name"] == name
    reference = getattr(diffusers, name).from_config(saved)
    _assert_same_config(sched.config, reference.config)
    _assert_same_config(loaded.config, getattr(diffusers, name)(**kwargs).config)


def test_save_config_to_json_file(tmp_path):
    sched = jaxsched.DDIMScheduler(timestep_spacing="trailing", trained_betas=TRAINED_BETAS)
    path = sched.save_config(tmp_path / "custom.json")
    assert path == tmp_path / "custom.json"
    assert path.is_file()
    loaded = jaxsched.from_config(path)
    assert loaded == sched
    assert hash(loaded) == hash(sched)


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_diffusers_saved_config_loads(tmp_path, name, kwargs):
    reference = getattr(diffusers, name)(**kwargs)
    reference.save_config(tmp_path)
    sched, caught = _record(jaxsched.from_config, tmp_path)
    assert caught == []
    assert type(sched) is getattr(jaxsched, name)
    _assert_same_config(sched.config, reference.config)
    assert sched == getattr(jaxsched, name)(**kwargs)


# -- deprecated keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [False, True])
def test_set_alpha_to_zero_is_renamed(value):
    config = {"_class_name": "DDIMInverseScheduler", "set_alpha_to_zero": value}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched = jaxsched.from_config(config)
    assert len(caught) == 1
    assert issubclass(caught[0].category, DeprecationWarning)
    assert "set_alpha_to_zero" in str(caught[0].message)
    assert "set_alpha_to_one" in str(caught[0].message)
    assert sched.set_alpha_to_one is value
    assert "set_alpha_to_zero" not in sched.config
    with pytest.warns(DeprecationWarning, match="set_alpha_to_zero"):
        jaxsched.from_config(config, cls=jaxsched.DDIMInverseScheduler)


def test_set_alpha_to_zero_false_changes_the_boundary_alpha():
    with pytest.warns(DeprecationWarning, match="set_alpha_to_zero"):
        sched = jaxsched.from_config(
            {"_class_name": "DDIMInverseScheduler", "set_alpha_to_zero": False}
        )
    assert sched == jaxsched.DDIMInverseScheduler(set_alpha_to_one=False)
    assert sched != jaxsched.DDIMInverseScheduler()


def test_set_alpha_to_zero_overrides_set_alpha_to_one_as_in_diffusers():
    ref = diffusers.DDIMInverseScheduler(set_alpha_to_one=True, set_alpha_to_zero=False)
    assert float(ref.initial_alpha_cumprod) == float(ref.alphas_cumprod[0])
    with pytest.warns(DeprecationWarning, match="set_alpha_to_zero"):
        sched = jaxsched.from_config(
            {"set_alpha_to_one": True, "set_alpha_to_zero": False}, cls="DDIMInverseScheduler"
        )
    assert sched.set_alpha_to_one is False


# -- inverse() ----------------------------------------------------------------------------------

INVERTIBLE = [kwargs for name, kwargs in CONFIGS if name == "DDIMScheduler"]


@pytest.mark.parametrize("kwargs", INVERTIBLE, ids=[str(i) for i in range(len(INVERTIBLE))])
def test_inverse_shares_options(kwargs):
    sched = jaxsched.DDIMScheduler(**kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inverse = sched.inverse()
    assert len(caught) == int(sched.thresholding)
    assert type(inverse) is jaxsched.DDIMInverseScheduler
    shared = set(inverse.config) & set(sched.config)
    assert shared == set(inverse.config)
    for key in shared:
        assert _plain(inverse.config[key]) == _plain(sched.config[key]), key
    assert type(inverse.inverse()) is jaxsched.DDIMScheduler
    # The same conversion as from_config(cls=) of the config.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert inverse == jaxsched.from_config(sched.to_config(), cls="DDIMInverseScheduler")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(steps_offset=1, clip_sample=False, prediction_type="v_prediction"),
        dict(trained_betas=TRAINED_BETAS, timestep_spacing="trailing", set_alpha_to_one=False),
        dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=100, clip_sample_range=2.0),
    ],
)
def test_inverse_of_inverse_is_the_original(kwargs):
    sched = jaxsched.DDIMScheduler(**kwargs)
    twice, caught = _record(lambda: sched.inverse().inverse())
    assert caught == []
    assert twice == sched
    assert hash(twice) == hash(sched)
    inverse = jaxsched.DDIMInverseScheduler(**kwargs)
    assert inverse.inverse().inverse() == inverse


def test_inverse_with_thresholding_warns():
    sched = jaxsched.DDIMScheduler(thresholding=True, steps_offset=1)
    with pytest.warns(UserWarning, match=r"has no option\(s\) \['thresholding'\]"):
        inverse = sched.inverse()
    assert inverse == jaxsched.DDIMInverseScheduler(steps_offset=1)
    # Back again, thresholding is off: it cannot survive the inverse.
    assert inverse.inverse() == sched.replace(thresholding=False)


# -- trained betas ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [jaxsched.DDIMScheduler, jaxsched.DDIMInverseScheduler])
@pytest.mark.parametrize(
    "betas",
    [
        TRAINED_BETAS,
        TRAINED_BETAS.astype(np.float32),
        list(TRAINED_BETAS),
        tuple(TRAINED_BETAS),
        jnp.asarray(TRAINED_BETAS, jnp.float32),
    ],
    ids=["float64", "float32", "list", "tuple", "jax"],
)
def test_trained_betas_are_hashable_and_used(cls, betas):
    sched = cls(trained_betas=betas)
    assert isinstance(sched.trained_betas, tuple)
    assert all(type(b) is float for b in sched.trained_betas)
    hash(sched)
    assert sched == cls(trained_betas=betas)
    assert hash(sched) == hash(cls(trained_betas=betas))
    assert sched != cls()
    np.testing.assert_array_equal(sched.trained_betas, np.asarray(betas, np.float64))

    state = sched.init(10, (2, 3))
    expected = np.asarray(betas, np.float64).astype(state.schedule.betas.dtype)
    np.testing.assert_array_equal(np.asarray(state.schedule.betas), expected)
    np.testing.assert_allclose(
        np.asarray(state.schedule.alphas_cumprod), np.cumprod(1.0 - expected), rtol=1e-5
    )
    # Different from the config's own linear schedule.
    default = cls().init(10, (2, 3))
    assert not np.allclose(state.schedule.betas, default.schedule.betas)


def test_trained_betas_override_beta_schedule_like_diffusers():
    betas = np.full(1000, 0.01)
    sched = jaxsched.DDIMScheduler(trained_betas=betas, beta_schedule="scaled_linear")
    reference = diffusers.DDIMScheduler(trained_betas=betas, beta_schedule="scaled_linear")
    state = sched.init(10, (1,))
    np.testing.assert_allclose(state.schedule.betas, reference.betas.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        state.schedule.alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=1e-5
    )


def test_dataclass_fields_are_the_diffusers_signature():
    import inspect

    for name in ("DDIMScheduler", "DDIMInverseScheduler"):
        ours = {f.name: f.default for f in dataclasses.fields(getattr(jaxsched, name))}
        params = inspect.signature(getattr(diffusers, name).__init__).parameters
        theirs = {
            k: p.default
            for k, p in params.items()
            if k != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD
        }
        assert ours == theirs, name


@pytest.mark.parametrize("name", ["DDIMScheduler", "DDIMInverseScheduler"])
def test_pipeline_constants_match_diffusers(name):
    ref = getattr(diffusers, name)()
    ours = getattr(jaxsched, name)()
    assert ours.init_noise_sigma == ref.init_noise_sigma
    assert ours.order == ref.order


# -- interop with real model configs, class-style loading, files diffusers loads quietly -------

# Modelled on the scheduler_config.json files that model repositories ship.
MODEL_CONFIGS = {
    "sd15_pndm": {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    "sdxl_euler": {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.19.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    },
    "if_ddpm": {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.16.0.dev0",
        "beta_end": 0.02,
        "beta_schedule": "squaredcos_cap_v2",
        "beta_start": 0.0001,
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "dynamic_thresholding_ratio": 0.95,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.5,
        "steps_offset": 0,
        "thresholding": True,
        "trained_betas": None,
        "variance_type": "learned_range",
    },
    "sd3_flow_match_euler": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.29.0.dev0",
        "num_train_timesteps": 1000,
        "shift": 3.0,
    },
    "flux_dev": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.30.0.dev0",
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
    },
    "ltx_video": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.32.0.dev0",
        "base_image_seq_len": 1024,
        "base_shift": 0.95,
        "invert_sigmas": False,
        "max_image_seq_len": 4096,
        "max_shift": 2.05,
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "shift_terminal": 0.1,
        "use_beta_sigmas": False,
        "use_dynamic_shifting": True,
        "use_exponential_sigmas": False,
        "use_karras_sigmas": False,
    },
    "wan_unipc": {
        "_class_name": "UniPCMultistepScheduler",
        "_diffusers_version": "0.33.0.dev0",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "disable_corrector": [],
        "dynamic_thresholding_ratio": 0.995,
        "final_sigmas_type": "zero",
        "flow_shift": 3.0,
        "lower_order_final": True,
        "num_train_timesteps": 1000,
        "predict_x0": True,
        "prediction_type": "flow_prediction",
        "rescale_betas_zero_snr": False,
        "sample_max_value": 1.0,
        "solver_order": 2,
        "solver_p": None,
        "solver_type": "bh2",
        "steps_offset": 0,
        "thresholding": False,
        "timestep_spacing": "linspace",
        "trained_betas": None,
        "use_beta_sigmas": False,
        "use_exponential_sigmas": False,
        "use_flow_sigmas": True,
        "use_karras_sigmas": False,
    },
}
VP_CONFIGS = ["sd15_pndm", "sdxl_euler", "if_ddpm"]


VP_CLASSES = sorted(n for n, c in jaxsched.SCHEDULERS.items() if c.training_levels == "vp")
FLOW_CLASSES = sorted(n for n, c in jaxsched.SCHEDULERS.items() if c.training_levels == "flow")


@pytest.mark.parametrize("model", VP_CONFIGS)
@pytest.mark.parametrize("name", VP_CLASSES)
def test_model_configs_load_quietly_into_every_class(model, name):
    """Keys of other diffusers schedulers (PNDM's skip_prk_steps, Euler's interpolation_type,
    DDPM's variance_type) are dropped without a word, as diffusers drops them."""
    sched, caught = _record(jaxsched.SCHEDULERS[name].from_config, MODEL_CONFIGS[model])
    assert not caught, [str(w.message) for w in caught]
    assert sched.beta_schedule == MODEL_CONFIGS[model]["beta_schedule"]
    assert type(sched).__name__ == name


def test_a_flow_matching_config_is_no_quietly_different_vp_sampler():
    for model in ("sd3_flow_match_euler", "wan_unipc"):
        with pytest.raises(ValueError, match="describes a flow-matching model"):
            jaxsched.DDIMScheduler.from_config(MODEL_CONFIGS[model])
    with pytest.raises(ValueError, match="use_flow_sigmas=True"):
        jaxsched.DPMSolverMultistepScheduler.from_config(MODEL_CONFIGS["sd3_flow_match_euler"])
    sched = jaxsched.DPMSolverMultistepScheduler.from_config(
        MODEL_CONFIGS["sd3_flow_match_euler"],
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=3.0,
    )
    assert sched.use_flow_sigmas and sched.flow_shift == 3.0
    wan, caught = _record(
        jaxsched.DPMSolverMultistepScheduler.from_config, MODEL_CONFIGS["wan_unipc"]
    )
    assert not caught and wan.use_flow_sigmas and wan.prediction_type == "flow_prediction"


#: Flow-model configs, each with the scheduler class, options and ``set_timesteps`` arguments
#: its diffusers pipeline uses: SD3's fixed shift, Flux's and LTX's resolution-dependent ``mu``
#: (``calculate_shift`` of the image sequence length) with the pipeline's own sigmas, and Wan's
#: UniPC config (flow_shift 3) loaded into flow-matching Euler, as its docs swap schedulers.
N_FLOW = 12
_FLUX_SIGMAS = np.linspace(1.0, 1.0 / N_FLOW, N_FLOW)
FLOW_PIPELINES = [
    ("sd3_flow_match_euler", "FlowMatchEulerDiscreteScheduler", {}, {}),
    ("sd3_flow_match_euler", "FlowMatchHeunDiscreteScheduler", {}, {}),
    ("flux_dev", "FlowMatchEulerDiscreteScheduler", {}, {"sigmas": _FLUX_SIGMAS, "seq_len": 4096}),
    ("ltx_video", "FlowMatchEulerDiscreteScheduler", {}, {"sigmas": _FLUX_SIGMAS, "seq_len": 1536}),
    ("wan_unipc", "UniPCMultistepScheduler", {}, {}),
    ("wan_unipc", "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, {}),
]


@pytest.mark.parametrize(
    ("model", "name", "overrides", "grid"),
    FLOW_PIPELINES,
    ids=[f"{m}-{n.removeprefix('FlowMatch')}" for m, n, *_ in FLOW_PIPELINES],
)
def test_flow_model_configs_build_the_pipelines_grid(model, name, overrides, grid):
    """Each flow model's config builds the class and the timesteps and sigmas diffusers builds
    from the same config and pipeline arguments (SD3, Flux, LTX-Video, Wan)."""
    config = {**MODEL_CONFIGS[model], **overrides}
    if name == config["_class_name"]:
        sched, caught = _record(jaxsched.from_config, config)
        assert not caught and type(sched).__name__ == name
    sched, caught = _record(jaxsched.SCHEDULERS[name].from_config, config)
    assert not caught and type(sched).__name__ == name
    reference = getattr(diffusers, name).from_config(config)
    kwargs = {}
    if "seq_len" in grid:
        kwargs["mu"] = jaxsched.calculate_shift(
            grid["seq_len"],
            sched.base_image_seq_len,
            sched.max_image_seq_len,
            sched.base_shift,
            sched.max_shift,
        )
    if "sigmas" in grid:
        reference.set_timesteps(sigmas=grid["sigmas"], **kwargs)
        state = sched.init(None, (1,), sigmas=grid["sigmas"], **kwargs)
    else:
        reference.set_timesteps(N_FLOW, **kwargs)
        state = sched.init(N_FLOW, (1,), **kwargs)
    np.testing.assert_allclose(state.timesteps, reference.timesteps.numpy(), rtol=1e-6)


def test_a_flow_shift_under_the_other_name_is_not_dropped_quietly():
    """diffusers drops Wan's ``flow_shift`` when its config builds flow-matching Euler, and
    SD3's ``shift`` when it builds DPM-Solver with flow sigmas: both samplers then run at
    shift 1. jaxsched refuses and names the option to pass."""
    with pytest.raises(ValueError, match=r"sets flow_shift=3\.0, .* pass shift=3\.0"):
        jaxsched.FlowMatchEulerDiscreteScheduler.from_config(MODEL_CONFIGS["wan_unipc"])
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    with pytest.raises(ValueError, match=r"sets shift=3\.0, .* pass flow_shift=3\.0"):
        jaxsched.DEISMultistepScheduler.from_config(MODEL_CONFIGS["sd3_flow_match_euler"], **flow)
    dropped = jaxsched.FlowMatchEulerDiscreteScheduler.from_config(
        MODEL_CONFIGS["wan_unipc"], shift=1.0
    )
    assert dropped.shift == 1.0
    flux = jaxsched.DPMSolverMultistepScheduler.from_config(MODEL_CONFIGS["flux_dev"], **flow)
    assert flux.use_dynamic_shifting and flux.flow_shift == 1.0  # mu at init sets the shift


@pytest.mark.parametrize("name", FLOW_CLASSES)
def test_flow_model_configs_load_into_the_flow_classes_and_vp_ones_do_not(name):
    cls = jaxsched.SCHEDULERS[name]
    sched, caught = _record(cls.from_config, MODEL_CONFIGS["sd3_flow_match_euler"])
    assert not caught and sched.shift == 3.0 and type(sched) is cls
    for model in VP_CONFIGS:
        with pytest.raises(ValueError, match="describes a variance-preserving model"):
            cls.from_config(MODEL_CONFIGS[model])


def test_truly_unknown_keys_still_warn():
    config = {**MODEL_CONFIGS["sd15_pndm"], "not_an_option": 1}
    _, caught = _record(jaxsched.DDIMScheduler.from_config, config)
    assert len(caught) == 1 and "['not_an_option']" in str(caught[0].message)


@pytest.mark.parametrize("name", sorted(jaxsched.SCHEDULERS))
def test_class_style_from_config_round_trips_and_takes_overrides(name):
    cls = jaxsched.SCHEDULERS[name]
    if cls.training_levels == "flow":
        options, override = {"shift": 3.0, "num_train_timesteps": 500}, {"shift": 2.0}
    else:
        options, override = (
            {"steps_offset": 1, "beta_schedule": "scaled_linear"},
            {"steps_offset": 2},
        )
    sched = cls(**options)
    assert cls.from_config(sched.config) == sched
    assert jaxsched.from_config(sched.config) == sched  # no _class_name needed
    assert cls.from_config(sched.config, **override) == sched.replace(**override)


@pytest.mark.parametrize(
    "sched",
    [
        jaxsched.DDIMScheduler(thresholding=True, clip_sample=False),
        jaxsched.DDIMInverseScheduler(steps_offset=1),
        jaxsched.DPMSolverMultistepScheduler(solver_order=3, use_karras_sigmas=True),
        jaxsched.DPMSolverMultistepInverseScheduler(),
        jaxsched.DEISMultistepScheduler(use_exponential_sigmas=True),
    ],
    ids=lambda s: type(s).__name__,
)
def test_save_config_writes_a_file_diffusers_loads_without_warnings(sched, tmp_path):
    """Extension options at their defaults are left out of the file (diffusers would warn
    about them as unexpected keys)."""
    import logging

    path = sched.save_config(tmp_path)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cls = getattr(diffusers, type(sched).__name__)
            loaded = cls.from_config(cls.load_config(str(path.parent)))
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if r.levelno >= logging.WARNING], records
    _assert_same_config(
        {k: v for k, v in sched.config.items() if k not in sched.extension_options},
        loaded.config,
    )


def test_the_shipped_table_of_diffusers_options_is_diffusers_own():
    import inspect

    from jaxsched.config import diffusers_scheduler_options

    table = diffusers_scheduler_options()
    for name, keys in table.items():
        params = inspect.signature(getattr(diffusers, name).__init__).parameters
        own = {
            k
            for k, p in params.items()
            if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        assert keys == own, name
