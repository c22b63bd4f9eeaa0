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


# -- one server, or a cluster of two: the same tests for both ------------------------------------


SERVER_KINDS = ["standalone", "cluster-of-2"]
"""How a server-level test may be served: one server, or two nodes of one cluster on a real Redis
(each new client connects to the next node: netutil.Nodes)."""


@pytest.fixture(params=SERVER_KINDS)
def serve(request, tmp_path):
    """``serve(**settings)``: a context manager that runs a threaded server with those settings, or a cluster.

    It yields the ``ThreadedServer``, or the cluster's ``netutil.Nodes``: both
    have ``port``, and in a cluster each read of it is the next node's port, so
    a test's clients alternate between the nodes.
    """
    import contextlib

    from netutil import threaded_cluster, threaded_server

    @contextlib.contextmanager
    def make(**settings):
        if request.param == "standalone":
            with threaded_server(**settings) as server:
                yield server
            return
        from redisutil import redis_servers

        with redis_servers(tmp_path) as redis, threaded_cluster(redis().url(), 2, **settings) as nodes:
            yield nodes

    return make


@pytest.fixture(params=SERVER_KINDS)
def daemons(request, tmp_path):
    """The server as a user starts it: one ``python -m reactor``, or two ``--cluster`` nodes on a real Redis.

    Yields ``netutil.Nodes`` (each read of ``port`` is the next node's); the
    processes are killed at the end if the test left them running.
    """
    from netutil import Nodes, cluster_processes, server_process

    if request.param == "standalone":
        with server_process() as server:
            yield Nodes([server])
        return
    from redisutil import redis_servers

    with redis_servers(tmp_path) as redis, cluster_processes(redis().url(), 2) as nodes:
        yield nodes
