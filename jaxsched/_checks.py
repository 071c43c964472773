"""Validation helpers shared by every scheduler: clear errors for bad options and inputs.

Checks of concrete values raise at once. Checks of traced values are
``checkify.debug_check`` calls: they cost nothing and do nothing unless the caller runs under
:func:`jaxsched.checked` (``checkify``), which then reports the first that failed.
"""

from __future__ import annotations

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


def check_nonnegative_scalar(name: str, value: Any) -> np.ndarray | None:
    """Check a step parameter is a real 0-d value, finite and >= 0 when concrete.

    Returns its value when concrete, ``None`` when traced.
    """
    if value is None or jnp.ndim(value) != 0:
        raise OptionTypeError(f"{name} must be a real scalar, got {value!r}")
    if not jnp.issubdtype(jnp.result_type(value), jnp.integer) and not jnp.issubdtype(
        jnp.result_type(value), jnp.floating
    ):
        raise OptionTypeError(f"{name} must be a real scalar, got {value!r}")
    known = concrete_value(value)
    if known is None:
        checkify.debug_check(
            jnp.isfinite(value) & (value >= 0), f"{name} must be finite and >= 0, got {{}}", value
        )
    elif not (np.isfinite(known) and known >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {known}")
    return known
