"""Test-wide settings: hypothesis draws the same examples on every run (no flaky CI), and never
times an example out (the first call of a configuration compiles)."""

import jax
import pytest
from hypothesis import settings

settings.register_profile("jaxsched", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("jaxsched")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free each module's compiled programs: an xdist worker otherwise keeps thousands of
    executables, and the machine's limit on memory maps (65530) ends LLVM with ENOMEM."""
    yield
    jax.clear_caches()
