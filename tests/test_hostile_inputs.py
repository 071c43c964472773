"""Hostile or mistaken inputs to every public entry point, as a table.

Each ``Row`` is a call that must raise the given exception type with a message that names the
culprit (the argument or option) and says what is allowed. Each fragment is a string, or a
tuple of strings of which one must appear (matching is case-sensitive). Each ``Valid`` row is a
nearby call that must succeed, so that no group passes by everything raising. Error paths that
``test_errors.py``, ``test_debug.py`` and the module tests already cover are not repeated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization

import jaxsched
import jaxsched.cli
from jaxsched import learned_grid, sharding
from jaxsched.guidance import classifier_free_guidance, with_conditioning
from jaxsched.nn import LinenSampler, NNXSampler

SHAPE = (2, 3)
X = jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(SHAPE)
EPS = 0.1 * X + 0.05
KEY = jax.random.key(0)
NAN, INF = float("nan"), float("inf")
ERR = (ValueError, TypeError)  # either is a fair answer

# "Says what is allowed": one of these must appear, by kind of constraint.
INT = ("an int", "integer")
BOOL = ("bool",)
REAL = ("real", "number", "float")
RANGE = ("must lie in", "must be >", "must be <", "finite", "one of", "at least", "positive")
CHOICE = ("one of",)
CALLABLE = ("callable", "a function")


class Row(NamedTuple):
    """A hostile call, the exception type it must raise, the fragments its message needs."""

    id: str
    call: Callable[[], Any]
    error: type[BaseException] | tuple[type[BaseException], ...]
    fragments: tuple[str | tuple[str, ...], ...]


class Valid(NamedTuple):
    """A call that must succeed; ``check`` (optional) must hold for its result."""

    id: str
    call: Callable[[], Any]
    check: Callable[[Any], bool] | None = None


def bad(id_, call, error, *fragments) -> Row:
    return Row(id_, call, error, fragments)


# -- shared objects (built once, on first use) -------------------------------------------------


@functools.cache
def _sched(name: str, **options) -> jaxsched.Scheduler:
    return jaxsched.SCHEDULERS[name](**options)


@functools.cache
def _state(name: str, n: int = 3, shape: tuple[int, ...] = SHAPE, **options):
    return _sched(name, **options).init(n, shape)


def _step(name, *, options=None, st=None, out=None, t=None, x=None, **kwargs):
    """``sched.step`` of class ``name`` at the state's current timestep, with overrides."""
    options = options or {}
    sched = _sched(name, **options)
    st = _state(name, **options) if st is None else st
    x = X if x is None else x
    out = 0.1 * x if out is None else out
    t = st.timesteps[st.step_index] if t is None else t
    return sched.step(st, out, t, x, **kwargs)


def _model(x, t):
    return 0.1 * x


def _init(name, *args, options=None, **kwargs):
    return _sched(name, **(options or {})).init(*args, **kwargs)


def _thresholds(name, options, **values):
    """The state of ``name`` with some traced threshold values replaced."""
    st = _state(name, **options)
    dtype = st.thresholds.clip_sample_range.dtype
    changed = {k: jnp.asarray(v, dtype) for k, v in values.items()}
    return st._replace(thresholds=st.thresholds._replace(**changed))


@functools.cache
def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="jaxsched-hostile-"))


@pytest.fixture(autouse=True, scope="module")
def _remove_scratch_files():
    yield
    shutil.rmtree(_tmp(), ignore_errors=True)


def _file(name: str, content: bytes | str) -> Path:
    """A scratch file holding ``content``."""
    path = _tmp() / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _finite(value) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(value))


def _isfile(path: Path) -> bool:
    return path.is_file()


# -- the command line ----------------------------------------------------------------------


class CliFailure(Exception):
    """The CLI stopped with an error: ``SystemExit`` with a non-zero code (its stderr and code
    are the message) or a ``ValueError`` / ``TypeError`` (its text)."""


def _cli(*argv: str) -> str:
    """Run ``jaxsched.cli.main(argv)``; return what it printed, or raise :class:`CliFailure`."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            jaxsched.cli.main(list(argv))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise CliFailure(f"{err.getvalue()}\n{exit_.code}") from exit_
        raise
    except ERR as error:
        raise CliFailure(f"{type(error).__name__}: {error}") from error
    return out.getvalue()


def _demo_weights(name: str) -> Path:
    """Weight files ``demo --weights`` must refuse with a clear message."""
    from jaxsched.demo.denoiser import DigitDenoiser, init_params, save_params

    path = _tmp() / name
    if name == "corrupt.msgpack":
        path.write_bytes(b"\x93\x01\xc1not msgpack" * 4)
    elif name == "other_width.msgpack":  # the same layers, other sizes
        save_params(init_params(jax.random.key(1), DigitDenoiser(width=8, depth=3)), path)
    elif name == "other_tree.msgpack":  # another model altogether
        path.write_bytes(serialization.to_bytes({"w": np.zeros(3, np.float32)}))
    elif name == "config.json":
        path.write_text(json.dumps(jaxsched.DDIMScheduler().to_config()))
    elif name == "a_directory":
        path.mkdir(exist_ok=True)
    return path


def _demo(name: str, flag: str = "--weights") -> str:
    weights = _demo_weights(name)
    return _cli("demo", flag, str(weights), "--out", str(_tmp() / "demo-out"))


# -- constructors: every class, every option ---------------------------------------------------

# (option, hostile value, error, fragments beyond the option's name); applied to every class
# that has the option. Values differ from those test_errors.py already tries.
OPTION_CASES = [
    ("num_train_timesteps", 2.5, TypeError, (INT,)),
    ("num_train_timesteps", None, TypeError, (INT,)),
    ("steps_offset", None, TypeError, (INT,)),
    ("solver_order", 2.0, TypeError, (INT,)),
    ("solver_order", "2", TypeError, (INT,)),
    ("solver_order", 0, ValueError, ("[1, 2, 3]",)),
    ("beta_start", INF, ValueError, (RANGE,)),
    ("beta_start", "1e-4", TypeError, (REAL,)),
    ("beta_end", NAN, ValueError, (RANGE,)),
    ("beta_end", None, TypeError, (REAL,)),
    ("clip_sample_range", NAN, ValueError, (RANGE,)),
    ("clip_sample_range", INF, ValueError, (RANGE,)),
    ("clip_sample_range", "1", TypeError, (REAL,)),
    ("dynamic_thresholding_ratio", NAN, ValueError, (RANGE,)),
    ("dynamic_thresholding_ratio", "0.9", TypeError, (REAL,)),
    ("sample_max_value", NAN, ValueError, (RANGE,)),
    ("sample_max_value", INF, ValueError, (RANGE,)),
    ("flow_shift", NAN, ValueError, (RANGE,)),
    ("flow_shift", INF, ValueError, (RANGE,)),
    ("flow_shift", "3", TypeError, (REAL,)),
    ("lambda_min_clipped", NAN, ValueError, (("finite", "-inf", "must be"),)),
    ("lambda_min_clipped", INF, ValueError, (("finite", "-inf", "must be"),)),
    ("lambda_min_clipped", "-5.1", TypeError, (REAL,)),
    ("trained_betas", "abc", ERR, ()),
    ("trained_betas", {"betas": [0.1]}, ERR, ()),
]


def _option_rows() -> tuple[list[Row], list[Valid]]:
    rows, valid = [], []
    for name, cls in sorted(jaxsched.SCHEDULERS.items()):
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        for option, value, error, extra in OPTION_CASES:
            if option in fields:
                rows.append(
                    bad(
                        f"ctor/{name}/{option}={value!r}",
                        lambda cls=cls, kw={option: value}: cls(**kw),
                        error,
                        option,
                        *extra,
                    )
                )
        for option, default in fields.items():
            if isinstance(default, bool):  # the JSON-string mistake: "false" is truthy
                rows.append(
                    bad(
                        f"ctor/{name}/{option}='false'",
                        lambda cls=cls, kw={option: "false"}: cls(**kw),
                        TypeError,
                        option,
                        BOOL,
                    )
                )
            elif isinstance(default, str) or option == "variance_type":
                value = (default or "learned").upper()
                rows.append(
                    bad(
                        f"ctor/{name}/{option}={value!r}",
                        lambda cls=cls, kw={option: value}: cls(**kw),
                        ValueError,
                        option,
                        CHOICE,
                        default or "learned",
                    )
                )
        rows.append(
            bad(
                f"ctor/{name}/misspelt-option",
                lambda cls=cls: cls(num_train_timestep=1000),
                TypeError,
                "num_train_timestep",
            )
        )
        valid += [
            Valid(f"ctor/{name}/defaults", cls, lambda s: hash(s) is not None),
            Valid(
                f"ctor/{name}/numpy-scalars",
                lambda cls=cls: cls(
                    num_train_timesteps=np.int64(500),
                    **(
                        {"shift": np.float32(3.0)}
                        if cls.training_levels == "flow"
                        else {"beta_end": np.float32(0.02)}
                    ),
                ),
                lambda s: type(s.num_train_timesteps) is int,
            ),
            Valid(
                f"ctor/{name}/T=1-runs", lambda cls=cls: cls(num_train_timesteps=1).init(1, SHAPE)
            ),
        ]
    valid += [
        Valid(
            "ctor/DPM/lambda_min_clipped=-5.1",
            lambda: jaxsched.DPMSolverMultistepScheduler(lambda_min_clipped=-5.1).init(3, SHAPE),
        ),
        Valid(
            "ctor/DDIM/trained_betas-array",
            lambda: jaxsched.DDIMScheduler(trained_betas=np.full(1000, 0.01)),
        ),
    ]
    return rows, valid


CONSTRUCTOR_ROWS, CONSTRUCTOR_VALID = _option_rows()

# -- init ------------------------------------------------------------------------------------

FORWARD_MULTISTEP = ["DPMSolverMultistepScheduler", "DEISMultistepScheduler"]
MULTISTEP = [n for n in sorted(jaxsched.SCHEDULERS) if "Multistep" in n]
SHAPE_ARG = ("shape must", "shape=", "shape (", "shape of")
FLOW_SHIFTING = {"use_flow_sigmas": True, "use_dynamic_shifting": True}


def _traced_timesteps(name):
    sched = _sched(name)
    return jax.jit(lambda ts: sched.init(None, SHAPE, timesteps=ts).coefficients)(
        jnp.array([900, 500, 100])
    )


INIT_ROWS = [
    *[
        bad(
            f"init/{n}/N=2.5",
            lambda n=n: _init(n, 2.5, SHAPE),
            TypeError,
            "num_inference_steps",
            INT,
        )
        for n in sorted(jaxsched.SCHEDULERS)
    ],
    *[
        row
        for n in MULTISTEP
        for row in (
            bad(
                f"init/{n}/N='10'",
                lambda n=n: _init(n, "10", SHAPE),
                TypeError,
                "num_inference_steps",
                INT,
            ),
            bad(
                f"init/{n}/N=0",
                lambda n=n: _init(n, 0, SHAPE),
                ValueError,
                "num_inference_steps",
                (">= 1", "at least 1", "positive"),
            ),
            bad(
                f"init/{n}/N=-1",
                lambda n=n: _init(n, -1, SHAPE),
                ValueError,
                "num_inference_steps",
                (">= 1", "at least 1", "positive"),
            ),
        )
    ],
    # shape
    *[
        row
        for n in ("DDIMScheduler", "DPMSolverMultistepScheduler", "DEISMultistepInverseScheduler")
        for row in (
            bad(
                f"init/{n}/shape='abc'",
                lambda n=n: _init(n, 3, "abc"),
                TypeError,
                SHAPE_ARG,
                ("tuple", "sequence", "ints", "integers"),
            ),
            bad(
                f"init/{n}/shape=(2,-1)",
                lambda n=n: _init(n, 3, (2, -1)),
                ERR,
                SHAPE_ARG,
                ("non-negative", ">= 0"),
            ),
            bad(
                f"init/{n}/shape=3.5",
                lambda n=n: _init(n, 3, 3.5),
                TypeError,
                SHAPE_ARG,
                ("tuple", "sequence", "ints", "integers"),
            ),
            bad(
                f"init/{n}/shape=None",
                lambda n=n: _init(n, 3, None),
                TypeError,
                SHAPE_ARG,
                ("tuple", "sequence", "ints", "integers"),
            ),
            bad(
                f"init/{n}/shape=(2,3.0)",
                lambda n=n: _init(n, 3, (2, 3.0)),
                TypeError,
                SHAPE_ARG,
                ("tuple", "sequence", "ints", "integers"),
            ),
        )
    ],
    # dtype
    bad(
        "init/DDIM/dtype='int32'",
        lambda: _init("DDIMScheduler", 3, SHAPE, "int32"),
        TypeError,
        "dtype",
        "floating",
    ),
    bad(
        "init/DPM/dtype=object",
        lambda: _init("DPMSolverMultistepScheduler", 3, SHAPE, object),
        TypeError,
        "dtype",
        "floating",
    ),
    bad(
        "init/DDIM/dtype='foo'",
        lambda: _init("DDIMScheduler", 3, SHAPE, "foo"),
        TypeError,
        "dtype",
        ("floating", "float32"),
    ),
    bad(
        "init/DEIS/dtype=complex64",
        lambda: _init("DEISMultistepScheduler", 3, SHAPE, jnp.complex64),
        TypeError,
        "dtype",
        "floating",
    ),
    # schedule
    bad(
        "init/DPM/schedule=dict",
        lambda: _init(
            "DPMSolverMultistepScheduler", 3, SHAPE, schedule=jaxsched.noise_schedule()._asdict()
        ),
        TypeError,
        "schedule",
        "NoiseSchedule",
    ),
    bad(
        "init/DEISInverse/schedule=str",
        lambda: _init("DEISMultistepInverseScheduler", 3, SHAPE, schedule="linear"),
        TypeError,
        "schedule",
        "NoiseSchedule",
    ),
    bad(
        "init/DDIM/schedule-with-NaN",
        lambda: _init(
            "DDIMScheduler",
            3,
            SHAPE,
            schedule=jaxsched.NoiseSchedule(jnp.full(1000, NAN), jnp.full(1000, NAN)),
        ),
        ValueError,
        "schedule",
        ("finite", "NaN"),
    ),
    bad(
        "init/DPM/schedule-alphas_cumprod>1",
        lambda: _init(
            "DPMSolverMultistepScheduler",
            3,
            SHAPE,
            schedule=jaxsched.NoiseSchedule(jnp.full(1000, 0.01), jnp.full(1000, 1.5)),
        ),
        ValueError,
        ("schedule", "alphas_cumprod"),
        ("(0, 1]", "[0, 1]", "lie in"),
    ),
    # custom timesteps (forward multistep only)
    *[
        row
        for n in FORWARD_MULTISTEP
        for row in (
            bad(
                f"init/{n}/timesteps-ascending",
                lambda n=n: _init(n, None, SHAPE, timesteps=[10, 500, 900]),
                ValueError,
                "timesteps",
                "descending",
            ),
            bad(
                f"init/{n}/timesteps-fractional",
                lambda n=n: _init(n, None, SHAPE, timesteps=[900.5, 500.25, 100.75]),
                ERR,
                "timesteps",
                ("integer", "int"),
            ),
            bad(
                f"init/{n}/timesteps-2d",
                lambda n=n: _init(n, None, SHAPE, timesteps=[[900, 500, 100]]),
                ValueError,
                "timesteps",
                ("1-D", "one-dimensional"),
            ),
            bad(
                f"init/{n}/timesteps-strings",
                lambda n=n: _init(n, None, SHAPE, timesteps=["900", "500", "100"]),
                TypeError,
                "timesteps",
                ("integer", "int"),
            ),
            bad(
                f"init/{n}/timesteps=5",
                lambda n=n: _init(n, None, SHAPE, timesteps=5),
                TypeError,
                "timesteps",
                ("sequence", "1-D", "array"),
            ),
            bad(
                f"init/{n}/timesteps-traced",
                lambda n=n: _traced_timesteps(n),
                ERR,
                "timesteps",
                ("concrete", "static", "jit", "traced"),
            ),
        )
    ],
    # custom sigmas
    *[
        row
        for n, good, order in (
            ("DDIMScheduler", [10.0, 1.0, 0.0], "descending"),
            ("DDIMInverseScheduler", [0.0, 1.0, 10.0], "ascending"),
            ("DPMSolverMultistepScheduler", [10.0, 1.0, 0.0], "descending"),
            ("DEISMultistepInverseScheduler", [0.1, 1.0, 10.0], "ascending"),
        )
        for row in (
            bad(
                f"init/{n}/sigmas-out-of-order",
                lambda n=n, g=good, o=order: _init(
                    n,
                    None,
                    SHAPE,
                    sigmas=np.float32(
                        [g[1], g[0], g[2]] if o == "descending" else [g[0], g[2], g[1]]
                    ),
                ),
                ValueError,
                "sigmas",
                order,
            ),
            bad(
                f"init/{n}/sigmas-2d",
                lambda n=n, g=good: _init(n, None, SHAPE, sigmas=np.float32([g, g])),
                ValueError,
                "sigmas",
                "1-D",
            ),
            bad(
                f"init/{n}/sigmas-NaN",
                lambda n=n, g=good: _init(n, None, SHAPE, sigmas=np.float32([*g[:2], NAN])),
                ValueError,
                "sigmas",
                "finite",
            ),
            bad(
                f"init/{n}/sigmas-strings",
                lambda n=n, g=good: _init(n, None, SHAPE, sigmas=[str(v) for v in g]),
                TypeError,
                "sigmas",
                ("floating", "float"),
            ),
            bad(
                f"init/{n}/sigmas-beyond-training-range",
                lambda n=n, g=good, o=order: _init(
                    n,
                    None,
                    SHAPE,
                    sigmas=np.float32([1e6, *g[1:]] if o == "descending" else [*g[:2], 1e6]),
                ),
                ValueError,
                "sigmas",
                ("range", "sigma_max", "largest", "training"),
            ),
        )
    ],
    # mu (dynamic flow shifting)
    *[
        row
        for n in FORWARD_MULTISTEP
        for row in (
            bad(
                f"init/{n}/mu=NaN",
                lambda n=n: _init(n, 3, SHAPE, options=FLOW_SHIFTING, mu=NAN),
                ValueError,
                "mu",
                "finite",
            ),
            bad(
                f"init/{n}/mu=1000",
                lambda n=n: _init(n, 3, SHAPE, options=FLOW_SHIFTING, mu=1000.0),
                ValueError,
                "mu",
                RANGE,
            ),
            bad(
                f"init/{n}/mu=-1000",
                lambda n=n: _init(n, 3, SHAPE, options=FLOW_SHIFTING, mu=-1000.0),
                ValueError,
                "mu",
                RANGE,
            ),
            bad(
                f"init/{n}/mu='0.5'",
                lambda n=n: _init(n, 3, SHAPE, options=FLOW_SHIFTING, mu="0.5"),
                TypeError,
                "mu",
                REAL,
            ),
            bad(
                f"init/{n}/mu-vector",
                lambda n=n: _init(n, 3, SHAPE, options=FLOW_SHIFTING, mu=np.array([0.5, 1.0])),
                TypeError,
                "mu",
                "scalar",
            ),
        )
    ],
]

INIT_VALID = [
    Valid("init/DPM/N=np.int64", lambda: _init("DPMSolverMultistepScheduler", np.int64(3), SHAPE)),
    Valid(
        "init/DDIM/shape-list",
        lambda: _init("DDIMScheduler", 3, [2, 3]),
        lambda s: s.pred_original_sample.shape == SHAPE,
    ),
    Valid(
        "init/DEIS/shape-numpy-ints", lambda: _init("DEISMultistepScheduler", 3, (np.int64(2), 3))
    ),
    Valid("init/DDIM/dtype='float32'", lambda: _init("DDIMScheduler", 3, SHAPE, "float32")),
    Valid(
        "init/DPM/dtype=bfloat16",
        lambda: _init("DPMSolverMultistepScheduler", 3, SHAPE, jnp.bfloat16),
    ),
    Valid(
        "init/DDIM/dtype='float'-is-the-default-float",
        lambda: _init("DDIMScheduler", 3, SHAPE, "float"),
        lambda s: jnp.issubdtype(s.pred_original_sample.dtype, jnp.floating),
    ),
    *[
        Valid(
            f"init/{n}/timesteps-descending",
            lambda n=n: _init(n, None, SHAPE, timesteps=[900, 500, 100]),
            _finite,
        )
        for n in FORWARD_MULTISTEP
    ],
    *[
        Valid(
            f"init/{n}/timesteps-with-a-repeat-run",
            lambda n=n: jaxsched.sample(
                _sched(n), _init(n, None, SHAPE, timesteps=[900, 900, 100]), _model, X
            ),
            _finite,
        )
        for n in FORWARD_MULTISTEP
    ],
    *[
        Valid(
            f"init/{n}/sigmas-valid", lambda n=n, g=g: _init(n, None, SHAPE, sigmas=np.float32(g))
        )
        for n, g in (
            ("DDIMScheduler", [10.0, 1.0, 0.0]),
            ("DDIMInverseScheduler", [0.0, 1.0, 10.0]),
            ("DPMSolverMultistepScheduler", [10.0, 1.0, 0.0]),
            ("DEISMultistepInverseScheduler", [0.1, 1.0, 10.0]),
        )
    ],
    *[
        Valid(
            f"init/{n}/mu=0.5",
            lambda n=n: _init(n, 3, SHAPE, options=FLOW_SHIFTING, mu=0.5),
            _finite,
        )
        for n in FORWARD_MULTISTEP
    ],
    # diffusers accepts use_dynamic_shifting without mu (flow_shift is then used as set).
    Valid(
        "init/DPM/dynamic-shifting-without-mu",
        lambda: _init("DPMSolverMultistepScheduler", 3, SHAPE, options=FLOW_SHIFTING),
        _finite,
    ),
]

# -- step ------------------------------------------------------------------------------------

DDIM, DPM, DEIS = "DDIMScheduler", "DPMSolverMultistepScheduler", "DEISMultistepScheduler"
LEARNED = {"variance_type": "learned"}
NAMES = ("DDIMScheduler", "DDIMInverseScheduler", "DPMSolver", "DEIS", "init", "solver_order")

STEP_ROWS = [
    bad(
        "step/DPM/model_output-rank-3",
        lambda: _step(DPM, out=jnp.zeros((2, 3, 1))),
        ValueError,
        "model_output",
        "shape",
    ),
    bad(
        "step/DPM-learned-variance/model_output-1d",
        lambda: _step(DPM, options=LEARNED, out=jnp.zeros(6)),
        ValueError,
        "model_output",
        "shape",
    ),
    bad(
        "step/DPM-learned-variance/sample-without-channel-axis",
        lambda: _step(
            DPM,
            options=LEARNED,
            st=_state(DPM, shape=(6,), **LEARNED),
            x=jnp.zeros(6),
            out=jnp.zeros(6),
        ),
        ValueError,
        ("variance_type", "channel"),
    ),
    bad("step/DDIM/eta='0.5'", lambda: _step(DDIM, eta="0.5", key=KEY), TypeError, "eta", REAL),
    bad(
        "step/DDIM/eta=1.5",
        lambda: _step(DDIM, eta=1.5, key=KEY),
        ValueError,
        "eta",
        ("[0", "<= 1", "at most 1"),
    ),
    bad(
        "step/DDIM/key='abc'",
        lambda: _step(DDIM, eta=1.0, key="abc"),
        TypeError,
        "key",
        ("PRNG", "jax.random.key"),
    ),
    bad(
        "step/DDIM/key-float-array",
        lambda: _step(DDIM, eta=1.0, key=jnp.zeros(2)),
        TypeError,
        "key",
        ("PRNG", "jax.random.key"),
    ),
    bad(
        "step/DDIM/key-batch-of-keys",
        lambda: _step(DDIM, eta=1.0, key=jax.random.split(KEY, 2)),
        ERR,
        "key",
        ("single", "one key", "scalar", "shape"),
    ),
    bad(
        "step/DPM-sde/key='abc'",
        lambda: _step(DPM, options={"algorithm_type": "sde-dpmsolver++"}, key="abc"),
        TypeError,
        "key",
        ("PRNG", "jax.random.key"),
    ),
    bad(
        "step/DDIM/noise='abc'",
        lambda: _step(DDIM, eta=1.0, noise="abc"),
        TypeError,
        "noise",
        ("array", "floating"),
    ),
    bad(
        "step/DDIM/model_output-NaN-concrete",
        lambda: _step(DDIM, out=jnp.full(SHAPE, NAN)),
        ValueError,
        "model_output",
        ("non-finite", "NaN"),
    ),
    bad(
        "step/DPM/sample-inf-concrete",
        lambda: _step(DPM, x=X.at[0, 0].set(INF), out=EPS),
        ValueError,
        "sample",
        ("non-finite", "inf"),
    ),
    bad(
        "step/DDIM/step_index=-1",
        lambda: _step(DDIM, st=_state(DDIM)._replace(step_index=jnp.int32(-1))),
        ValueError,
        "step_index",
        (">= 0", "negative"),
    ),
    bad(
        "step/DPM/step_index=-1",
        lambda: _step(DPM, st=_state(DPM)._replace(step_index=jnp.int32(-1))),
        ValueError,
        "step_index",
        (">= 0", "negative"),
    ),
    bad(
        "step/DDIM/t='666'",
        lambda: _step(DDIM, t="666"),
        TypeError,
        ("t=", "t must"),
        ("number", "integer", "array", "numeric"),
    ),
    bad(
        "step/DDIM/use_clipped_model_output='no'",
        lambda: _step(DDIM, use_clipped_model_output="no"),
        TypeError,
        "use_clipped_model_output",
        BOOL,
    ),
    # A state built by another scheduler: the tables mean something else.
    bad(
        "step/DDIMInverse/DDIM-state",
        lambda: _step("DDIMInverseScheduler", st=_state(DDIM)),
        ERR,
        "state",
        NAMES,
    ),
    bad("step/DEIS/DPM-state", lambda: _step(DEIS, st=_state(DPM)), ERR, "state", NAMES),
    bad("step/DPM/DDIM-state", lambda: _step(DPM, st=_state(DDIM)), ERR, "state", NAMES),
    bad("step/DDIM/DPM-state", lambda: _step(DDIM, st=_state(DPM)), ERR, "state", NAMES),
    bad(
        "step/DPM-order-2/order-3-state",
        lambda: _step(DPM, st=_state(DPM, solver_order=3)),
        ERR,
        "state",
        ("solver_order", "history", "order"),
    ),
    bad(
        "step/DPM-order-3/order-2-state",
        lambda: _step(DPM, options={"solver_order": 3}, st=_state(DPM)),
        ERR,
        "state",
        ("solver_order", "history", "order"),
    ),
    bad("step/DPM/eta-is-not-an-option", lambda: _step(DPM, eta=0.5), TypeError, "eta"),
]


def _raw_and_new_keys_agree():
    _, raw = _step(DDIM, eta=1.0, key=jax.random.PRNGKey(7))
    _, new = _step(DDIM, eta=1.0, key=jax.random.key(7))
    return np.asarray(raw), np.asarray(new)


def _zero_batch(name, options):
    st = _state(name, shape=(0, 3), **options)
    return _step(name, options=options, st=st, x=jnp.zeros((0, 3)), out=jnp.zeros((0, 3)))[1]


STEP_VALID = [
    Valid(
        "step/DDIM/raw-uint32-key-equals-new-style-key",
        _raw_and_new_keys_agree,
        lambda pair: np.array_equal(*pair),
    ),
    Valid("step/DDIM/key-with-eta=0-is-ignored", lambda: _step(DDIM, eta=0.0, key=KEY)),
    Valid("step/DDIM/eta=1-int", lambda: _step(DDIM, eta=1, key=KEY)),
    Valid("step/DDIM/eta=np.float32", lambda: _step(DDIM, eta=np.float32(0.3), key=KEY)),
    Valid("step/DDIM/t-python-int", lambda: _step(DDIM, t=666)),
    Valid("step/DDIM/t-float-equal", lambda: _step(DDIM, t=666.0)),
    Valid(
        "step/DDIM/step_index-python-int",
        lambda: _step(DDIM, st=_state(DDIM)._replace(step_index=0)),
    ),
    Valid(
        "step/DDIM-thresholding/zero-size-batch",
        lambda: _zero_batch(DDIM, {"thresholding": True}),
        lambda y: y.shape == (0, 3),
    ),
    Valid(
        "step/DPM-thresholding/zero-size-batch",
        lambda: _zero_batch(DPM, {"thresholding": True}),
        lambda y: y.shape == (0, 3),
    ),
    Valid(
        "step/DPM-learned-variance/extra-channels",
        lambda: _step(DPM, options=LEARNED, out=jnp.zeros((2, 6))),
        lambda r: r[1].shape == SHAPE,
    ),
    Valid(
        "step/DPM-sde/key",
        lambda: _step(DPM, options={"algorithm_type": "sde-dpmsolver++"}, key=KEY),
    ),
]

# -- sample / invert ---------------------------------------------------------------------------


def _sample(name=DDIM, *, sched=None, st=None, model=_model, x=None, **kwargs):
    sched = _sched(name) if sched is None else sched
    st = _state(name) if st is None else st
    return jaxsched.sample(sched, st, model, X if x is None else x, **kwargs)


SAMPLE_ROWS = [
    bad("sample/model_fn=None", lambda: _sample(model=None), TypeError, "model_fn", CALLABLE),
    bad(
        "sample/model_fn-one-argument",
        lambda: _sample(model=lambda x: x),
        TypeError,
        "model_fn",
        "(x, t)",
    ),
    bad(
        "sample/model_fn-wrong-shape",
        lambda: _sample(model=lambda x, t: x[:1]),
        ValueError,
        ("model_fn", "model_output"),
        "shape",
    ),
    bad(
        "sample/model_fn-returns-None",
        lambda: _sample(DPM, model=lambda x, t: None),
        TypeError,
        ("model_fn", "model_output"),
        "array",
    ),
    bad(
        "sample/state=None",
        lambda: jaxsched.sample(_sched(DDIM), None, _model, X),
        TypeError,
        "state",
        "SchedulerState",
    ),
    bad(
        "sample/scheduler-and-state-swapped",
        lambda: jaxsched.sample(_state(DDIM), _sched(DDIM), _model, X),
        TypeError,
        ("scheduler", "state"),
    ),
    bad(
        "sample/scheduler='DDIMScheduler'",
        lambda: jaxsched.sample("DDIMScheduler", _state(DDIM), _model, X),
        TypeError,
        "scheduler",
    ),
    bad(
        "sample/DDIMInverse-with-DDIM-state",
        lambda: _sample(sched=_sched("DDIMInverseScheduler"), st=_state(DDIM)),
        ERR,
        "state",
        NAMES,
    ),
    bad("sample/remat=True", lambda: _sample(remat=True), ValueError, "remat", CHOICE),
    bad(
        "sample/unroll=-1",
        lambda: _sample(DPM, unroll=-1),
        ValueError,
        "unroll",
        ("non-negative", "positive", ">= 0", ">= 1"),
    ),
    bad("sample/unroll='4'", lambda: _sample(unroll="4"), TypeError, "unroll", INT),
    bad("sample/unroll=2.5", lambda: _sample(DPM, unroll=2.5), TypeError, "unroll", INT),
    bad(
        "sample/key='abc'",
        lambda: _sample(eta=1.0, key="abc"),
        TypeError,
        "key",
        ("PRNG", "jax.random.key"),
    ),
    bad("sample/misspelt-step-option", lambda: _sample(etaa=0.5), TypeError, "etaa"),
    bad(
        "invert/inverse-scheduler-passed",
        lambda: jaxsched.invert(_sched("DDIMInverseScheduler"), _model, X, 3),
        ValueError,
        "forward",
        ("DDIMInverseScheduler", "inverse"),
    ),
    bad(
        "invert/model_fn=None",
        lambda: jaxsched.invert(_sched(DPM), None, X, 3),
        TypeError,
        "model_fn",
        CALLABLE,
    ),
    bad(
        "invert/N=2.5",
        lambda: jaxsched.invert(_sched(DEIS), _model, X, 2.5),
        TypeError,
        "num_inference_steps",
        INT,
    ),
]

SAMPLE_VALID = [
    Valid("sample/DDIM", _sample, _finite),
    Valid("sample/DPM/unroll=2", lambda: _sample(DPM, unroll=2), _finite),
    Valid("sample/DDIM/remat='step'", lambda: _sample(remat="step"), _finite),
    Valid("sample/DDIM/eta-key", lambda: _sample(eta=1.0, key=KEY), _finite),
    Valid("invert/DEIS", lambda: jaxsched.invert(_sched(DEIS), _model, X, 3), _finite),
]

# -- exact_invert ----------------------------------------------------------------------------


def _exact(**kwargs):
    return jaxsched.exact_invert(_sched(DDIM, clip_sample=False), _model, X, 3, **kwargs)


EXACT_ROWS = [
    bad(
        "exact_invert/iterations=2.5", lambda: _exact(iterations=2.5), TypeError, "iterations", INT
    ),
    bad(
        "exact_invert/iterations='3'", lambda: _exact(iterations="3"), TypeError, "iterations", INT
    ),
    *[
        bad(
            f"exact_invert/relaxation={r!r}",
            lambda r=r: _exact(relaxation=r),
            ValueError,
            "relaxation",
            ("(0, 2)", "must lie in", "> 0", "0 <"),
        )
        for r in (0.0, -1.0, NAN, 2.5)
    ],
    bad(
        "exact_invert/relaxation='1'", lambda: _exact(relaxation="1"), TypeError, "relaxation", REAL
    ),
]

EXACT_VALID = [
    Valid("exact_invert/DDIM", lambda: _exact(iterations=2), _finite),
    Valid(
        "exact_invert/relaxation=0.5-np-int-iterations",
        lambda: _exact(iterations=np.int64(2), relaxation=0.5),
        _finite,
    ),
]

# -- learned grids -----------------------------------------------------------------------------


def _learn(n=2, **kwargs):
    kwargs = {"reference": X, "iterations": 1, **kwargs}
    return learned_grid.learn_sigmas(_sched(DDIM, clip_sample=False), _model, n, X, **kwargs)


def _grid_file(name, record):
    return _file(name, json.dumps(record))


GRID_RECORD = {
    "format": learned_grid.GRID_FILE_FORMAT,
    "num_inference_steps": 2,
    "sigmas": [10.0, 1.0, 0.0],
    "scheduler": jaxsched.DDIMScheduler().to_config(),
}

LEARNED_GRID_ROWS = [
    bad(
        "learn_sigmas/N=0",
        lambda: _learn(0),
        ValueError,
        "num_inference_steps",
        (">= 1", "at least 1", "positive"),
    ),
    bad("learn_sigmas/N=2.5", lambda: _learn(2.5), TypeError, "num_inference_steps", INT),
    bad("learn_sigmas/N='4'", lambda: _learn("4"), TypeError, "num_inference_steps", INT),
    bad(
        "learn_sigmas/iterations=2.5", lambda: _learn(iterations=2.5), TypeError, "iterations", INT
    ),
    bad(
        "learn_sigmas/iterations='3'", lambda: _learn(iterations="3"), TypeError, "iterations", INT
    ),
    bad(
        "learn_sigmas/optimizer='adam'",
        lambda: _learn(optimizer="adam"),
        TypeError,
        "optimizer",
        "optax",
    ),
    bad(
        "learn_sigmas/optimizer-with-NaN-learning-rate",
        lambda: _learn(optimizer=optax.adam(NAN), iterations=2),
        ValueError,
        ("optimizer", "learning rate"),
        ("non-finite", "NaN"),
    ),
    bad(
        "learn_sigmas/reference_steps=0",
        lambda: _learn(reference=None, reference_steps=0),
        ValueError,
        "reference_steps",
        (">= 1", "at least 1", "positive"),
    ),
    bad(
        "learn_sigmas/reference_steps=2.5",
        lambda: _learn(reference=None, reference_steps=2.5),
        TypeError,
        "reference_steps",
        INT,
    ),
    bad(
        "load_sigmas/binary-garbage",
        lambda: learned_grid.load_sigmas(_file("garbage.json", b"\xff\xfe\x00\x81" * 8)),
        ValueError,
        "garbage.json",
        "sigma grid file",
    ),
    bad(
        "load_sigmas/missing-file",
        lambda: learned_grid.load_sigmas(_tmp() / "missing_grid.json"),
        FileNotFoundError,
        "missing_grid.json",
    ),
    bad(
        "load_sigmas/sigmas-are-strings",
        lambda: learned_grid.load_sigmas(
            _grid_file("strings.json", {**GRID_RECORD, "sigmas": ["10", "1", "zero"]})
        ),
        ValueError,
        "strings.json",
        "sigmas",
    ),
    bad(
        "load_sigmas/scheduler-not-a-config",
        lambda: learned_grid.load_sigmas(
            _grid_file("scheduler5.json", {**GRID_RECORD, "scheduler": 5})
        ),
        ValueError,
        "scheduler5.json",
        "scheduler",
    ),
    bad(
        "save_sigmas/scheduler-is-a-dict",
        lambda: learned_grid.save_sigmas(_tmp() / "g.json", jnp.array([10.0, 1.0, 0.0]), {}),
        TypeError,
        "scheduler",
        "Scheduler",
    ),
]

LEARNED_GRID_VALID = [
    Valid("learn_sigmas/small", lambda: _learn(2).sigmas, lambda s: s.shape == (3,)),
    Valid(
        "load_sigmas/good-file",
        lambda: learned_grid.load_sigmas(_grid_file("good.json", GRID_RECORD)),
        lambda r: r[0].shape == (3,),
    ),
    Valid(
        "save_sigmas/good",
        lambda: learned_grid.save_sigmas(
            _tmp() / "saved.json", jnp.array([10.0, 1.0, 0.0]), _sched(DDIM)
        ),
        _isfile,
    ),
]

# -- from_config / load_config / save_config -------------------------------------------------

CONFIG_ROWS = [
    bad(
        "from_config/_class_name-is-a-list",
        lambda: jaxsched.from_config({"_class_name": ["DDIMScheduler"]}),
        ERR,
        "_class_name",
    ),
    bad(
        "from_config/non-string-key",
        lambda: jaxsched.from_config({"_class_name": "DDIMScheduler", 1: 2}),
        ERR,
        "key",
    ),
    bad(
        "from_config/trained_betas='abc'",
        lambda: jaxsched.from_config({"_class_name": "DDIMScheduler", "trained_betas": "abc"}),
        ERR,
        "trained_betas",
    ),
    bad(
        "from_config/clip_sample='false'",
        lambda: jaxsched.from_config({"_class_name": "DDIMScheduler", "clip_sample": "false"}),
        TypeError,
        "clip_sample",
        BOOL,
    ),
    bad(
        "from_config/cls-is-an-instance",
        lambda: jaxsched.from_config({}, cls=jaxsched.DDIMScheduler()),
        ERR,
        "scheduler class",
        "available",
    ),
    bad(
        "load_config/binary-file",
        lambda: jaxsched.load_config(_file("binary_config.json", b"\xff\xfe\x00\x81" * 8)),
        ValueError,
        "binary_config.json",
        "JSON",
    ),
    bad("save_config/path=5", lambda: _sched(DDIM).save_config(5), TypeError, "path"),
    bad(
        "replace/unknown-option",
        lambda: _sched(DDIM).replace(thresholdin=True),
        TypeError,
        "thresholdin",
    ),
]

CONFIG_VALID = [
    Valid(
        "from_config/dict",
        lambda: jaxsched.from_config(_sched(DPM).to_config()),
        lambda s: s == _sched(DPM),
    ),
    Valid(
        "from_config/file",
        lambda: jaxsched.from_config(_sched(DEIS).save_config(_tmp() / "config")),
        lambda s: s == _sched(DEIS),
    ),
]

# -- noise schedules, add_noise, get_velocity --------------------------------------------------

SCHEDULE = jaxsched.noise_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012)

SCHEDULE_ROWS = [
    bad(
        "noise_schedule/num_train_timesteps=0",
        lambda: jaxsched.noise_schedule(num_train_timesteps=0),
        ValueError,
        "num_train_timesteps",
        (">= 1", "at least 1", "positive"),
    ),
    bad(
        "noise_schedule/num_train_timesteps=2.5",
        lambda: jaxsched.noise_schedule(num_train_timesteps=2.5),
        TypeError,
        "num_train_timesteps",
        INT,
    ),
    bad(
        "noise_schedule/num_train_timesteps='1000'",
        lambda: jaxsched.noise_schedule(num_train_timesteps="1000"),
        TypeError,
        "num_train_timesteps",
        INT,
    ),
    bad(
        "noise_schedule/beta_start='0.1'",
        lambda: jaxsched.noise_schedule(beta_start="0.1"),
        TypeError,
        "beta_start",
        REAL,
    ),
    bad(
        "noise_schedule/beta_start=NaN",
        lambda: jaxsched.noise_schedule(beta_start=NAN),
        ValueError,
        "beta_start",
        RANGE,
    ),
    bad(
        "noise_schedule/rescale_betas_zero_snr='no'",
        lambda: jaxsched.noise_schedule(rescale_betas_zero_snr="no"),
        TypeError,
        "rescale_betas_zero_snr",
        BOOL,
    ),
    bad(
        "noise_schedule/dtype='foo'",
        lambda: jaxsched.noise_schedule(dtype="foo"),
        TypeError,
        "dtype",
        "floating",
    ),
    bad(
        "noise_schedule/trained_betas-strings",
        lambda: jaxsched.noise_schedule(trained_betas=["0.01"] * 1000),
        ERR,
        "trained_betas",
    ),
    bad(
        "add_noise/schedule='linear'",
        lambda: jaxsched.add_noise("linear", X, EPS, 10),
        TypeError,
        "schedule",
        "NoiseSchedule",
    ),
    bad(
        "add_noise/noise-transposed",
        lambda: jaxsched.add_noise(SCHEDULE, X, EPS.reshape(3, 2), 10),
        ValueError,
        "noise",
        "shape",
    ),
    bad(
        "add_noise/noise-broadcastable",
        lambda: jaxsched.add_noise(SCHEDULE, X, EPS[:, :1], 10),
        ValueError,
        "noise",
        "shape",
    ),
    bad(
        "add_noise/timesteps-longer-than-batch",
        lambda: jaxsched.add_noise(SCHEDULE, X, EPS, jnp.array([1, 2, 3])),
        ValueError,
        "timesteps",
        ("batch", "shape"),
    ),
    bad(
        "add_noise/timesteps='10'",
        lambda: jaxsched.add_noise(SCHEDULE, X, EPS, "10"),
        TypeError,
        "timesteps",
        ("number", "integer", "array"),
    ),
    bad(
        "add_noise/timesteps=NaN",
        lambda: jaxsched.add_noise(SCHEDULE, X, EPS, NAN),
        ValueError,
        "timesteps",
        ("0..999", "finite"),
    ),
    bad(
        "add_noise/integer-samples",
        lambda: jaxsched.add_noise(SCHEDULE, X.astype(jnp.int32), EPS, 10),
        TypeError,
        ("original_samples", "sample"),
        "floating",
    ),
    bad(
        "get_velocity/noise-transposed",
        lambda: jaxsched.get_velocity(SCHEDULE, X, EPS.reshape(3, 2), 10),
        ValueError,
        "noise",
        "shape",
    ),
    bad(
        "get_velocity/timesteps=-1",
        lambda: jaxsched.get_velocity(SCHEDULE, X, EPS, -1),
        ValueError,
        "timesteps",
        "0..999",
    ),
    bad(
        "DPM.add_noise/timestep-outside-training-range",
        lambda: _sched(DPM).add_noise(_state(DPM), X, EPS, 5000),
        ValueError,
        "timesteps",
        "0..999",
    ),
    bad(
        "DPM.add_noise/noise-transposed",
        lambda: _sched(DPM).add_noise(_state(DPM), X, EPS.reshape(3, 2), _state(DPM).timesteps[0]),
        ValueError,
        "noise",
        "shape",
    ),
]

SCHEDULE_VALID = [
    Valid("noise_schedule/scaled_linear", lambda: SCHEDULE.alphas_cumprod, _finite),
    Valid(
        "add_noise/per-sample-timesteps",
        lambda: jaxsched.add_noise(SCHEDULE, X, EPS, jnp.array([10, 500])),
        _finite,
    ),
    Valid(
        "add_noise/continuous-timestep", lambda: jaxsched.add_noise(SCHEDULE, X, EPS, 10.5), _finite
    ),
    Valid(
        "get_velocity/scalar-timestep", lambda: jaxsched.get_velocity(SCHEDULE, X, EPS, 10), _finite
    ),
    Valid(
        "DPM.add_noise/grid-timestep",
        lambda: _sched(DPM).add_noise(_state(DPM), X, EPS, _state(DPM).timesteps[1]),
        _finite,
    ),
]

# -- Thresholds inside a state -------------------------------------------------------------

CLIP = {"clip_sample": True}
THRESHOLD = {"thresholding": True}

THRESHOLD_ROWS = [
    bad(
        "thresholds/DDIM/clip_sample_range=-1",
        lambda: _step(DDIM, options=CLIP, st=_thresholds(DDIM, CLIP, clip_sample_range=-1.0)),
        ValueError,
        "clip_sample_range",
        RANGE,
    ),
    bad(
        "thresholds/DDIM/clip_sample_range=NaN",
        lambda: _step(DDIM, options=CLIP, st=_thresholds(DDIM, CLIP, clip_sample_range=NAN)),
        ValueError,
        "clip_sample_range",
        RANGE,
    ),
    bad(
        "thresholds/DDIM/dynamic_thresholding_ratio=1.5",
        lambda: _step(
            DDIM, options=THRESHOLD, st=_thresholds(DDIM, THRESHOLD, dynamic_thresholding_ratio=1.5)
        ),
        ValueError,
        "dynamic_thresholding_ratio",
        RANGE,
    ),
    bad(
        "thresholds/DDIM/sample_max_value=-1",
        lambda: _step(
            DDIM, options=THRESHOLD, st=_thresholds(DDIM, THRESHOLD, sample_max_value=-1.0)
        ),
        ValueError,
        "sample_max_value",
        RANGE,
    ),
    bad(
        "thresholds/DPM/dynamic_thresholding_ratio=NaN",
        lambda: _step(
            DPM, options=THRESHOLD, st=_thresholds(DPM, THRESHOLD, dynamic_thresholding_ratio=NAN)
        ),
        ValueError,
        "dynamic_thresholding_ratio",
        RANGE,
    ),
    bad(
        "thresholds/DEIS/sample_max_value=0",
        lambda: _step(
            DEIS, options=THRESHOLD, st=_thresholds(DEIS, THRESHOLD, sample_max_value=0.0)
        ),
        ValueError,
        "sample_max_value",
        RANGE,
    ),
    bad(
        "thresholds/DDIM/thresholds=None",
        lambda: _step(DDIM, options=CLIP, st=_state(DDIM, **CLIP)._replace(thresholds=None)),
        TypeError,
        "thresholds",
        "Thresholds",
    ),
]

THRESHOLD_VALID = [
    Valid(
        "thresholds/DDIM/clip_sample_range=2",
        lambda: _step(DDIM, options=CLIP, st=_thresholds(DDIM, CLIP, clip_sample_range=2.0)),
        _finite,
    ),
    Valid(
        "thresholds/DPM/ratio-and-max",
        lambda: _step(
            DPM,
            options=THRESHOLD,
            st=_thresholds(DPM, THRESHOLD, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
        ),
        _finite,
    ),
]

# -- Flax samplers -----------------------------------------------------------------------------


class TinyLinen(nn.Module):
    @nn.compact
    def __call__(self, x, t):
        return nn.Dense(x.shape[-1])(x)


class TinyNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(SHAPE[1], SHAPE[1], rngs=rngs)

    def __call__(self, x, t):
        return self.dense(x)


def _linen(n, sched=None):
    sched = _sched(DDIM) if sched is None else sched
    sampler = LinenSampler(denoiser=TinyLinen(), scheduler=sched, num_inference_steps=n)
    return sampler.init(KEY, X)


def _nnx(n, sched=None):
    sched = _sched(DPM) if sched is None else sched
    return NNXSampler(TinyNNX(nnx.Rngs(0)), sched, n)(X)


FLAX_ROWS = [
    bad("LinenSampler/N=2.5", lambda: _linen(2.5), TypeError, "num_inference_steps", INT),
    bad(
        "LinenSampler/N=0",
        lambda: _linen(0),
        ValueError,
        "num_inference_steps",
        (">= 1", "at least 1"),
    ),
    bad("LinenSampler/N='10'", lambda: _linen("10"), TypeError, "num_inference_steps", INT),
    bad("LinenSampler/scheduler='DDIM'", lambda: _linen(3, sched="DDIM"), TypeError, "scheduler"),
    bad("NNXSampler/N=2.5", lambda: _nnx(2.5), TypeError, "num_inference_steps", INT),
    bad(
        "NNXSampler/N=-1",
        lambda: _nnx(-1),
        ValueError,
        "num_inference_steps",
        (">= 1", "at least 1"),
    ),
    bad("NNXSampler/scheduler='DPM'", lambda: _nnx(3, sched="DPM"), TypeError, "scheduler"),
]

FLAX_VALID = [
    Valid("LinenSampler/init", lambda: _linen(2)),
    Valid("NNXSampler/call", lambda: _nnx(np.int64(2)), _finite),
]

# -- guidance ----------------------------------------------------------------------------------

COND, UNCOND = jnp.ones((2, 1)), jnp.zeros((2, 1))


def _conditional(x, t, c):
    return 0.1 * x + c


def _guided(model=_conditional, cond=COND, uncond=UNCOND, scale=3.0, **kwargs):
    return classifier_free_guidance(model, cond, uncond, scale, **kwargs)(X, jnp.int32(500))


GUIDANCE_ROWS = [
    bad(
        "classifier_free_guidance/model=None",
        lambda: _guided(model=None),
        TypeError,
        "model",
        CALLABLE,
    ),
    bad(
        "classifier_free_guidance/scale='7.5'",
        lambda: _guided(scale="7.5"),
        TypeError,
        "guidance_scale",
        REAL,
    ),
    bad(
        "classifier_free_guidance/scale=NaN",
        lambda: _guided(scale=NAN),
        ValueError,
        "guidance_scale",
        "finite",
    ),
    bad(
        "classifier_free_guidance/guidance_rescale=-0.5",
        lambda: _guided(guidance_rescale=-0.5),
        ValueError,
        "guidance_rescale",
        ("[0, 1]",),
    ),
    bad(
        "classifier_free_guidance/guidance_rescale=NaN",
        lambda: _guided(guidance_rescale=NAN),
        ValueError,
        "guidance_rescale",
        ("[0, 1]", "finite"),
    ),
    bad(
        "classifier_free_guidance/cond-and-uncond-differ",
        lambda: _guided(cond={"c": COND}, uncond=UNCOND),
        ValueError,
        ("conditioning", "unconditioning"),
    ),
    bad(
        "classifier_free_guidance/model-returns-wrong-batch",
        lambda: _guided(model=lambda x, t, c: x[:-1]),
        ValueError,
        "model",
        ("doubled batch", "2 *", "twice"),
    ),
    bad(
        "with_conditioning/model=None",
        lambda: with_conditioning(None, COND)(X, 500),
        TypeError,
        "model",
        CALLABLE,
    ),
]

GUIDANCE_VALID = [
    Valid("classifier_free_guidance/valid", _guided, _finite),
    Valid(
        "classifier_free_guidance/traced-scale",
        lambda: jax.jit(lambda s: _guided(scale=s, guidance_rescale=0.7))(2.0),
        _finite,
    ),
    Valid(
        "with_conditioning/valid", lambda: with_conditioning(_conditional, COND)(X, 500), _finite
    ),
]

# -- sharding and the debug wrapper ---------------------------------------------------------

SHARDING_ROWS = [
    bad(
        "batch_sharding/ndim=2.5",
        lambda: sharding.batch_sharding(sharding.batch_mesh(), 2.5),
        TypeError,
        "ndim",
        INT,
    ),
    bad(
        "shard_batch/scalar",
        lambda: sharding.shard_batch(jnp.float32(1.0), sharding.batch_mesh()),
        ValueError,
        ("batch axis", "leading"),
    ),
    bad(
        "shard_batch/unknown-axis-name",
        lambda: sharding.shard_batch(X, sharding.batch_mesh(), axis_name="foo"),
        ValueError,
        "foo",
        ("axis", "mesh"),
    ),
    bad("batch_mesh/devices=[]", lambda: sharding.batch_mesh([]), ValueError, "devices"),
    bad("batch_mesh/devices='cpu'", lambda: sharding.batch_mesh("cpu"), TypeError, "devices"),
    bad(
        "replicate/mesh='mesh'",
        lambda: sharding.replicate(_state(DDIM), "mesh"),
        TypeError,
        "mesh",
        "Mesh",
    ),
    bad("checked/fn-not-callable", lambda: jaxsched.checked("run")(X), TypeError, "fn", CALLABLE),
]

SHARDING_VALID = [
    Valid("shard_batch/valid", lambda: sharding.shard_batch(X, sharding.batch_mesh()), _finite),
    Valid("replicate/state", lambda: sharding.replicate(_state(DDIM), sharding.batch_mesh())),
    Valid("checked/valid", lambda: jaxsched.checked(jax.jit(lambda x: 2 * x))(X), _finite),
]

# -- the command line -------------------------------------------------------------------------

EXAMPLE = ("example", "--steps", "2", "--dim", "2")

CLI_ROWS = [
    bad(
        "cli/example/--num-samples=0",
        lambda: _cli(*EXAMPLE, "--num-samples", "0"),
        CliFailure,
        ("--num-samples", "num_samples"),
        (">= 1", "at least 1", "positive"),
    ),
    bad(
        "cli/example/--num-samples=-1",
        lambda: _cli(*EXAMPLE, "--num-samples", "-1"),
        CliFailure,
        ("--num-samples", "num_samples"),
        (">= 1", "at least 1", "positive"),
    ),
    bad(
        "cli/example/--steps=0",
        lambda: _cli("example", "--steps", "0", "--num-samples", "4"),
        CliFailure,
        "--steps",
        (">= 1", "at least 1", "positive"),
    ),
    bad(
        "cli/example/--dim=0",
        lambda: _cli("example", "--steps", "2", "--dim", "0", "--num-samples", "4"),
        CliFailure,
        "--dim",
        (">= 1", "at least 1", "positive"),
    ),
    *[
        bad(
            f"cli/demo/--weights={name}",
            lambda name=name: _demo(name),
            CliFailure,
            "--weights",
            name,
        )
        for name in (
            "missing.msgpack",
            "corrupt.msgpack",
            "other_width.msgpack",
            "other_tree.msgpack",
            "config.json",
            "a_directory",
        )
    ],
    *[
        bad(
            f"cli/demo/--flow-weights={name}",
            lambda name=name: _demo(name, "--flow-weights"),
            CliFailure,
            "--flow-weights",
            name,
        )
        for name in ("missing.msgpack", "other_width.msgpack")
    ],
]

CLI_VALID = [
    Valid(
        "cli/example/small",
        lambda: _cli(*EXAMPLE, "--num-samples", "4"),
        lambda printed: "nan" not in printed and "steps" in printed,
    ),
]

# -- the tests -------------------------------------------------------------------------------

ROWS = [
    *CONSTRUCTOR_ROWS,
    *INIT_ROWS,
    *STEP_ROWS,
    *SAMPLE_ROWS,
    *EXACT_ROWS,
    *LEARNED_GRID_ROWS,
    *CONFIG_ROWS,
    *SCHEDULE_ROWS,
    *THRESHOLD_ROWS,
    *FLAX_ROWS,
    *GUIDANCE_ROWS,
    *SHARDING_ROWS,
    *CLI_ROWS,
]
VALID = [
    *CONSTRUCTOR_VALID,
    *INIT_VALID,
    *STEP_VALID,
    *SAMPLE_VALID,
    *EXACT_VALID,
    *LEARNED_GRID_VALID,
    *CONFIG_VALID,
    *SCHEDULE_VALID,
    *THRESHOLD_VALID,
    *FLAX_VALID,
    *GUIDANCE_VALID,
    *SHARDING_VALID,
    *CLI_VALID,
]


def _summary(value) -> str:
    """A short description of what a call returned."""
    if isinstance(value, jaxsched.SchedulerState):
        return f"a SchedulerState (timesteps {np.asarray(value.timesteps).tolist()[:5]})"
    if isinstance(value, (jax.Array, np.ndarray)):
        a = np.asarray(value)
        nan = int(np.isnan(a).sum()) if np.issubdtype(a.dtype, np.floating) else 0
        return f"an array {a.shape} {a.dtype} ({nan} NaN)"
    if isinstance(value, tuple):
        return "(" + ", ".join(_summary(v) for v in value) + ")"
    try:
        return repr(value)[:200]
    except Exception:  # some objects cannot print themselves
        return f"a {type(value).__name__}"


def _contains(message: str, fragment: str | tuple[str, ...]) -> bool:
    options = (fragment,) if isinstance(fragment, str) else fragment
    return any(option in message for option in options)


def _names(error) -> str:
    errors = error if isinstance(error, tuple) else (error,)
    return " or ".join(e.__name__ for e in errors)


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_hostile_input_is_rejected_with_a_clear_message(row: Row):
    try:
        result = row.call()
    except row.error as error:
        message = str(error)
        missing = [f for f in row.fragments if not _contains(message, f)]
        assert not missing, f"{type(error).__name__} lacks {missing}: {message[:600]}"
        return
    except Exception as error:  # the wrong type: report it
        pytest.fail(f"expected {_names(row.error)}, got {type(error).__name__}: {error!s:.600}")
    pytest.fail(f"no error; returned {_summary(result)}")


@pytest.mark.parametrize("row", VALID, ids=[row.id for row in VALID])
def test_valid_input_is_accepted(row: Valid):
    result = row.call()
    if row.check is not None:
        assert row.check(result), f"returned {_summary(result)}"


def test_every_scheduler_class_and_entry_point_has_rows():
    """The table covers every scheduler class and every group of entry points."""
    ids = {row.id.split("/")[0] for row in ROWS}
    classes = {row.id.split("/")[1] for row in CONSTRUCTOR_ROWS}
    assert classes == set(jaxsched.SCHEDULERS)
    for group in (
        "ctor",
        "init",
        "step",
        "sample",
        "invert",
        "exact_invert",
        "learn_sigmas",
        "load_sigmas",
        "from_config",
        "noise_schedule",
        "add_noise",
        "thresholds",
        "LinenSampler",
        "NNXSampler",
        "classifier_free_guidance",
        "shard_batch",
        "cli",
    ):
        assert group in ids, group
