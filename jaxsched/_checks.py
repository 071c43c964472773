"""Validation helpers shared by every scheduler: clear errors for bad options and inputs.

Checks of concrete values raise at once. Checks of traced values are
``checkify.debug_check`` calls: they cost nothing and do nothing unless the caller runs under
:func:`jaxsched.checked` (``checkify``), which then reports the first that failed.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


class OptionTypeError(TypeError, ValueError):
    """An option or input of the wrong type; also a ``ValueError`` (a bad configuration)."""


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise OptionTypeError(f"{name} must be a bool, got {value!r}")


def check_int(name: str, value: Any, *, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OptionTypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Check a real number lies in ``[low, high]``; ``low_open`` / ``high_open`` exclude ends."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptionTypeError(f"{name} must be a real number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or not np.isfinite(value):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value}")


def real_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a float64 NumPy array; a ``TypeError`` naming ``name`` unless it holds real
    numbers (strings, objects and nested ragged lists are refused, not parsed)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise OptionTypeError(f"{name} must be numbers, got {value!r:.80}") from err
    if array.dtype.kind not in "iuf":
        raise OptionTypeError(f"{name} must be real numbers, got {value!r:.80}")
    return array.astype(np.float64)


def check_callable(name: str, fn: Any, signature: str, *args: Any) -> None:
    """``fn`` is callable and accepts ``args`` positionally (its signature, where Python can
    tell); raises ``TypeError`` naming ``name`` and the expected ``signature``."""
    if not callable(fn):
        raise OptionTypeError(f"{name} must be a callable {signature}, got {fn!r:.60}")
    try:
        inspect.signature(fn).bind(*args)
    except ValueError:  # no signature to read (a builtin): the call itself will tell
        return
    except TypeError as err:
        raise OptionTypeError(f"{name} must accept {signature}: {err}") from err


def check_scheduler(name: str, scheduler: Any) -> None:
    """``scheduler`` is a jaxsched scheduler instance; raises ``TypeError`` naming ``name``."""
    from jaxsched.schedulers.base import Scheduler

    if not isinstance(scheduler, Scheduler):
        raise OptionTypeError(
            f"{name} must be a jaxsched scheduler such as jaxsched.DDIMScheduler(), got "
            f"{scheduler!r:.60}"
        )


def concrete_value(x: Any) -> np.ndarray | None:
    """The value of ``x`` as NumPy when it is known now, ``None`` when it is traced."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def check_floating_dtype(name: str, dtype) -> None:
    """Samples and tables must be real floating point (bfloat16, float16, float32, float64)."""
    if not jnp.issubdtype(dtype, jnp.floating):
        raise OptionTypeError(f"{name} must have a floating-point dtype, got {jnp.dtype(dtype)}")


def plain_python(value: Any) -> Any:
    """NumPy scalars as Python scalars, so configs stay JSON-serialisable and hashable."""
    return value.item() if isinstance(value, np.generic) else value


def check_scalar_in(name: str, value: Any, low: float, high: float) -> np.ndarray | None:
    """Check a step parameter is a real 0-d value in ``[low, high]``: raises when concrete, a
    :func:`jaxsched.checked` debug check when traced.

    Returns its value when concrete, ``None`` when traced.
    """
    dtype = None if value is None or isinstance(value, str) else jnp.result_type(value)
    real = dtype is not None and (
        jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    )
    if not real or jnp.ndim(value) != 0:
        raise OptionTypeError(f"{name} must be a real scalar in [{low}, {high}], got {value!r}")
    known = concrete_value(value)
    if known is None:
        checkify.debug_check(
            (value >= low) & (value <= high), f"{name} must lie in [{low}, {high}], got {{}}", value
        )
    elif not low <= known <= high:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {known}")
    return known
