"""Shared test configuration.

Hypothesis profiles: ``dev`` (the default) keeps the local run quick; ``ci``
(selected by ``HYPOTHESIS_PROFILE=ci``, which ``.ci/run`` sets) tries more
examples.  Neither profile has a deadline: timing is the benchmark's job,
never a unit test's.
"""

import os

import pytest
from hypothesis import HealthCheck, settings
from loopharness import LoopHarness

settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
)
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def harness():
    """``harness(**settings)`` makes a ``LoopHarness`` (tests/loopharness.py), closed after the test."""
    made = []

    def make(**settings) -> LoopHarness:
        loop = LoopHarness(**settings)
        made.append(loop)
        return loop

    yield make
    for loop in made:
        loop.close()
