"""Shared test configuration.

Hypothesis profiles: ``dev`` (the default) keeps the local run quick; ``ci``
(selected by ``HYPOTHESIS_PROFILE=ci``, which ``.ci/run`` sets) tries more
examples.  Neither profile has a deadline: timing is the benchmark's job,
never a unit test's.
"""

import os

from hypothesis import HealthCheck, settings

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
