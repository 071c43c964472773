"""A debug mode for compiled code: the runtime checks that concrete inputs get at once, also
for traced ones (under ``jit``, ``vmap``, ``lax.scan`` and ``grad``).

jaxsched puts ``checkify.debug_check`` calls where a value it validates is traced: a ``t`` that
is not the state's current timestep, a step past the end of the run, non-finite model outputs
or samples, out-of-range ``add_noise`` timesteps, a traced ``eta`` below 0, a traced custom
sigma grid out of order, traced betas outside ``[0, 1]``. Outside :func:`checked` they are
dropped when the program is traced, so ordinary runs compile to the same code and cost nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from jax.experimental import checkify

from jaxsched._checks import OptionTypeError

P = ParamSpec("P")
R = TypeVar("R")


def checked(fn: Callable[P, R], *, errors: frozenset = checkify.user_checks) -> Callable[P, R]:
    """``fn`` with jaxsched's debug checks on: it returns what ``fn`` returns, or raises
    ``JaxRuntimeError`` with the message of the first check that failed.

    ``fn`` may be jitted (``checked(jax.jit(f))`` compiles once and caches like ``jax.jit(f)``);
    call the result outside ``jit``, since it raises on the host. ``errors`` adds checkify's own
    checks, e.g. ``checkify.user_checks | checkify.nan_checks`` to find the first operation that
    makes a NaN.

    Example::

        run = jaxsched.checked(jax.jit(lambda s, x: jaxsched.sample(sched, s, model_fn, x)))
        x0 = run(state, x_T)  # raises if, say, the model returns NaN at some step
    """
    if not callable(fn):
        raise OptionTypeError(f"fn must be a callable (e.g. a jitted function), got {fn!r:.60}")
    checkified = checkify.checkify(fn, errors=errors)

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        error, out = checkified(*args, **kwargs)
        error.throw()
        return out

    return run
