"""The cluster benchmark's tools still work: a cluster of two under the load generator.

``bench_cluster_server.py`` is not a test (its figures are never
asserted); this keeps it from rotting: its ``Cluster`` (two nodes on a
``redis-server`` of their own) runs a tiny fan-out through
``bench_server.run_loadgen``, every delivery is checked across the nodes,
both nodes took clients, and the engine's costs are there.  Linux only, as
the load generator is.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from netutil import ROOT
from tools import require

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the benchmark's load generator uses epoll and /proc"
)

BENCHMARKS = ROOT / "tests" / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_cluster_server  # noqa: E402
import bench_server  # noqa: E402


def test_a_cluster_of_two_delivers_every_line_across_its_nodes():
    case = bench_server.Case("fanout", "fanout", ["fanout", "--clients", 10, "--senders", 3,
                                                  "--messages", 100], [], 60)
    cluster = bench_cluster_server.Cluster(2, require("redis-server"), [])
    cluster.start()
    redis_pid = cluster.redis_pid
    try:
        result = bench_server.run_loadgen(cluster, "chat", case)
    finally:
        cluster.stop()
    assert result["ok"], result.get("error")
    assert result["checked_deliveries"] == 3 * 100 * 9
    # Connection i went to node i mod 2: both nodes served clients and senders.
    assert all(node.log_has(b"New connection") for node in cluster.nodes)
    assert len(result["cpu_by_pid_s"]) == 3 and str(redis_pid) in result["cpu_by_pid_s"]
    bench_cluster_server.add_engine_costs(result, str(redis_pid))
    assert result["entries"] == 300 and result["redis_us_per_entry"] > 0
    # A turn's appends are one XADD: at least one per node (its NodeUp), at most one per entry.
    assert 2 <= cluster.commandstats["xadd"][0] <= 300 + 10 + 2 * 2  # MSG, LOGIN, NodeUp, NodeDown


def test_the_targets_are_judged_on_the_medians_of_the_rounds():
    def runs(**figures):
        return {target: [{"ok": True, key: value} for value in values]
                for target, (key, values) in figures.items()}

    cases = bench_cluster_server.cases_for(["fanout-small", "latency 20/s"], quick=True)
    verdicts = bench_cluster_server.judge(cases, {
        "fanout-small": runs(standalone=("deliveries_per_s", [10.0, 8.0, 9.0]),
                             **{"cluster-1": ("deliveries_per_s", [5.0, 4.0, 1.0])}),
        "latency 20/s": runs(standalone=("p99_ms", [2.0, 3.0, 9.0]),
                             **{"cluster-1": ("p99_ms", [3.9, 1.0, 4.1])}),
    })
    assert [(v["target"].split(" ")[1], v["met"]) for v in verdicts] == [("fan-out", False), ("adds", True)]
    assert verdicts[0]["figure"].startswith("0.44 x") and verdicts[1]["figure"].startswith("+0.900 ms")


def test_the_generator_refuses_several_ports_for_ping():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "loadgen.py"), "--proto", "chat", "--port", "1,2", "ping"],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 2 and "ping speaks to one server" in completed.stderr
