"""Test-wide settings: hypothesis draws the same examples on every run (no flaky CI), and never
times an example out (the first call of a configuration compiles)."""

from hypothesis import settings

settings.register_profile("jaxsched", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("jaxsched")
