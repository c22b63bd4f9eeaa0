"""Benchmark: cluster mode against the standalone server, under the same load.

Not a test (pytest does not collect it); run it from the repository root:

    python tests/benchmarks/bench_cluster_server.py [--rounds 3] [--scenario NAME ...]
                                                    [--quick] [--json FILE]

Three targets, each started afresh for every run, on free ports:

- ``standalone``: ``python -m reactor``, exactly as ``bench_server.py``
  starts it (flood control, the idle timeout and eviction out of the way);
- ``cluster-1``: one node, the same command with ``--cluster``, on a
  ``redis-server`` of its own (persistence off);
- ``cluster-2``: two such nodes on one ``redis-server``.  The load
  generator spreads its connections over both (connection ``i`` goes to
  node ``i mod 2``), so half of every sender's lines cross from one node
  to the other through the log, and every delivery is checked as in
  ``bench_server.py``: count, order per sender, nothing damaged or extra.

The scenarios are ``bench_server.py``'s own cases (imported, not copied):
``fanout-small`` (100 clients, 10 senders × 2,000 MSG as fast as they
go) and ``latency 20/s`` (100 clients, 10 senders paced at 20 MSG/s each);
``latency 200/s`` and ``fanout-wide`` can be named too.  Every round runs
every scenario against every target in turn (standalone, cluster-1,
cluster-2), so a drift in the machine's load falls on all three alike;
every round is printed, and the targets of issue 11 are judged on the
medians:

- a cluster of 1 delivers at least half of standalone's fan-out rate;
- a cluster of 1 adds at most 1 ms to standalone's p99 at 20 MSG/s.

Beside them, the engine's cost: Redis's CPU in the measured window
(schedstat, nanoseconds) per delivered line and per appended entry (one
entry per MSG), and the nodes' CPU per entry, which are what the scaling
model in docs/cluster.md is built from.

Standard library only, Linux (/proc, epoll); needs ``redis-server`` on the
PATH (or ``--redis-server``) and ``hiredis`` for cluster mode.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_server  # noqa: E402
from bench_server import ChatServer, RedisServer, ServerError, median_of  # noqa: E402

TARGETS = ("standalone", "cluster-1", "cluster-2")
SCENARIOS = ("fanout-small", "latency 20/s", "latency 200/s", "fanout-wide")
DEFAULT_SCENARIOS = ("fanout-small", "latency 20/s")
FANOUT_SHARE_GOAL = 0.5
"""Issue 11: a cluster of 1 delivers at least half of standalone's fan-out rate."""
P99_ADDED_GOAL_MS = 1.0
"""Issue 11: a cluster of 1 adds at most 1 ms to the p99 at 20 MSG/s per sender."""


class Cluster(ChatServer):
    """A ``redis-server`` and ``nodes`` chat servers on it, seen by ``run_loadgen`` as one server.

    ``port`` and ``pid`` are comma-separated lists, which the load generator
    takes as they are: the nodes' ports (it spreads its connections over
    them) and the nodes' PIDs then Redis's (it measures them together and
    each on its own).  ``stop`` stops the nodes one by one, then Redis, and
    gives the first node's exit status that is not 0.
    """

    label = "cluster"

    def __init__(self, nodes: int, redis_binary: str, extra: list) -> None:
        self.redis = RedisServer(redis_binary)
        self.url = f"redis://127.0.0.1:{self.redis.port}"
        self.nodes = [ChatServer(["--cluster", self.url, *extra]) for _ in range(nodes)]
        self.tls = None
        self.proc = None
        self.port = ""
        self.command = self.nodes[0].command
        self.commandstats: dict | None = None

    @property
    def pid(self) -> str:
        return ",".join(str(server.pid) for server in (*self.nodes, self.redis))

    @property
    def redis_pid(self) -> int:
        return self.redis.pid

    def start(self) -> None:
        try:
            self.redis.start()
            for node in self.nodes:
                node.start()
        except ServerError:
            self.stop()
            raise
        self.port = ",".join(str(node.port) for node in self.nodes)

    def check_alive(self) -> None:
        for server in (*self.nodes, self.redis):
            server.check_alive()

    def log_has(self, needle: bytes) -> bool:
        return any(node.log_has(needle) for node in self.nodes)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(f"  node {n}:\n{node.log_tail(lines)}" for n, node in enumerate(self.nodes, 1))

    def stop(self) -> int | None:
        statuses = [node.stop() for node in self.nodes]
        if self.redis.proc is not None and self.commandstats is None:
            self.commandstats = redis_commandstats(self.redis.port)
        self.redis.stop()
        return next((s for s in statuses if s not in (0, None)), statuses[0] if statuses else None)


def redis_commandstats(port: int) -> dict:
    """``INFO commandstats``: command -> (calls, µs per call), over Redis's whole life.

    It shows what each entry cost the engine beyond ``XADD``: the nodes'
    reads (``XREAD``, and the ``XINFO`` before each), the leases' ``SET``
    and ``EXISTS``.  Empty if Redis does not answer."""
    stats: dict = {}
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
            sock.sendall(b"INFO commandstats\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, _, body = data.partition(b"\r\n")
                if head.startswith(b"$") and len(body) >= int(head[1:]) + 2:
                    break
    except (OSError, ValueError):
        return stats
    for line in data.decode("ascii", "replace").splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_"):].partition(":")
        values = dict(pair.split("=", 1) for pair in fields.split(",") if "=" in pair)
        try:
            stats[name] = (int(values["calls"]), float(values["usec_per_call"]))
        except (KeyError, ValueError):
            continue
    return stats


def make_target(target: str, args) -> ChatServer:
    if target == "standalone":
        return ChatServer(args.server_arg)
    return Cluster(int(target.rsplit("-", 1)[1]), args.redis_server, args.server_arg)


def cases_for(names: list, quick: bool) -> list:
    """``bench_server.py``'s cases of these names, in its plan's order."""
    plan = bench_server.plan(quick)
    every = [case for group in plan.values() for case in group if not case.tls]
    return [case for case in every if case.name in names]


# -- running ---------------------------------------------------------------------------


def run_one(case, target: str, args, tag: str) -> dict:
    """``run_once``, again while other programs used ``bench_server.NOISY`` of a core or more
    during the run (at most ``--retries`` times); the least disturbed run counts."""
    return bench_server.least_disturbed(lambda: run_once(case, target, args, tag), args.retries, tag)


def run_once(case, target: str, args, tag: str) -> dict:
    """A fresh target, one generator run; the result with the engine's and the nodes' costs."""
    busy = bench_server.settle(args.settle)
    server = make_target(target, args)
    print(f"  {tag} running...", file=sys.stderr, flush=True)
    try:
        server.start()
    except ServerError as error:
        return {"ok": False, "error": str(error), "target": target}
    redis_pid = server.redis_pid if isinstance(server, Cluster) else None
    try:
        result = bench_server.run_loadgen(server, "chat", case)
    finally:
        server.stop()
    result["target"] = target
    result["busy_before"] = busy
    if isinstance(server, Cluster):
        result["redis_commandstats"] = server.commandstats
        if result.get("ok"):
            add_engine_costs(result, str(redis_pid))
    return result


def add_engine_costs(result: dict, redis_pid: str) -> None:
    """Redis's CPU per delivered line and per entry, and the nodes' CPU per entry, in µs."""
    by_pid = result.get("cpu_by_pid_s") or {}
    redis_s = by_pid.get(redis_pid)
    nodes_s = sum(seconds for pid, seconds in by_pid.items() if pid != redis_pid)
    entries = result["senders"] * result["messages"]  # one MSG entry each, all in the window
    deliveries = result["expected_deliveries"]
    if redis_s is None:
        return
    result["redis_cpu_s"] = redis_s
    result["nodes_cpu_s"] = nodes_s
    result["entries"] = entries
    result["redis_us_per_delivery"] = redis_s * 1e6 / deliveries
    result["redis_us_per_entry"] = redis_s * 1e6 / entries
    result["nodes_us_per_entry"] = nodes_s * 1e6 / entries
    result["node_us_per_entry"] = nodes_s * 1e6 / entries / (len(by_pid) - 1)


def run_rounds(cases: list, args) -> dict:
    """``--rounds`` rounds; in each, every case against every target in turn."""
    runs: dict = {case.name: {target: [] for target in args.targets} for case in cases}
    for round_no in range(1, args.rounds + 1):
        for case in cases:
            for target in args.targets:
                tag = f"[round {round_no}/{args.rounds}: {case.name} / {target}]"
                result = run_one(case, target, args, tag)
                result["round"] = round_no
                runs[case.name][target].append(result)
                if not result.get("ok"):
                    print(f"  {tag} FAILED: {result.get('error')}", file=sys.stderr, flush=True)
    return runs


# -- the report --------------------------------------------------------------------------

METRICS = {
    "fanout": [("deliveries/s", "deliveries_per_s", ",.0f")],
    "latency": [("p50 ms", "p50_ms", ".3f"), ("p99 ms", "p99_ms", ".3f"),
                ("p99.9 ms", "p999_ms", ".3f")],
}
COSTS = [
    ("Redis CPU µs / delivered line", "redis_us_per_delivery", ".3f"),
    ("Redis CPU µs / entry", "redis_us_per_entry", ".2f"),
    ("nodes' CPU µs / entry (all nodes)", "nodes_us_per_entry", ".1f"),
    ("server CPU s in the window", "server_cpu_s", ".2f"),
    ("other load, share of a core", "other_share", ".2f"),
    ("runs (retried when other load >= 30%)", "tries", "d"),
]


def other_share(result: dict) -> float | None:
    window = result.get("window_s") or 0
    return (result.get("other_cpu_s") or 0) / window if window else None


def rows_for(case_name: str, mode: str, by_target: dict, targets: list) -> list:
    """Table rows: one per metric, each round's figures and their median, per target."""
    rows = []
    for label, key, spec in METRICS[mode] + COSTS:
        cells = [case_name, label]
        any_value = False
        for target in targets:
            results = by_target.get(target, [])
            for r in results:
                if key == "other_share" and r.get("ok"):
                    r["other_share"] = other_share(r)
            rounds = [bench_server.fmt(r.get(key), spec) if r.get("ok") else "FAIL" for r in results]
            med = median_of(results, key)
            any_value = any_value or med is not None
            cells.append(f"{bench_server.fmt(med, spec)} ({', '.join(rounds)})")
        if any_value:
            rows.append(cells)
        case_name = ""
    return rows


def judge(cases: list, runs: dict) -> list:
    """Issue 11's targets on the medians: (text, figure, met, margin)."""
    verdicts = []
    for case in cases:
        by = runs[case.name]
        if "cluster-1" not in by or "standalone" not in by:
            continue
        if case.name == "fanout-small":
            alone = median_of(by["standalone"], "deliveries_per_s")
            one = median_of(by["cluster-1"], "deliveries_per_s")
            if alone and one:
                share = one / alone
                verdicts.append({
                    "target": f"cluster-1 fan-out >= {FANOUT_SHARE_GOAL:g} x standalone",
                    "figure": f"{share:.2f} x ({one:,.0f} / {alone:,.0f} deliveries/s)",
                    "met": share >= FANOUT_SHARE_GOAL,
                    "margin": f"{(share - FANOUT_SHARE_GOAL) / FANOUT_SHARE_GOAL:+.0%} of the limit",
                })
        if case.name == "latency 20/s":
            alone = median_of(by["standalone"], "p99_ms")
            one = median_of(by["cluster-1"], "p99_ms")
            if alone is not None and one is not None:
                added = one - alone
                verdicts.append({
                    "target": f"cluster-1 adds <= {P99_ADDED_GOAL_MS:g} ms to p99 at 20 MSG/s",
                    "figure": f"{added:+.3f} ms ({one:.3f} - {alone:.3f} ms)",
                    "met": added <= P99_ADDED_GOAL_MS,
                    "margin": f"{P99_ADDED_GOAL_MS - added:+.3f} ms to spare",
                })
    return verdicts


def report(cases: list, runs: dict, args, info: dict) -> str:
    out = []
    header = ["scenario", "metric"] + [f"{t}: median (rounds)" for t in args.targets]
    rows = []
    for case in cases:
        mode = case.args[0]
        rows += rows_for(case.name, mode, runs[case.name], args.targets)
    out.append(bench_server.render_table(header, rows, right=set()))
    out.append("")
    out.append("CPU from /proc/PID/task/*/schedstat over the measured window (first send to "
               "last delivery); an entry is one MSG in the log.")
    for verdict in judge(cases, runs):
        out.append(f"target: {verdict['target']}: {verdict['figure']}: "
                   f"{'met' if verdict['met'] else 'MISSED'} ({verdict['margin']})")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark cluster mode (1 and 2 nodes on Redis) against the standalone server.",
    )
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, metavar="NAME",
                        help=f"run this scenario (repeatable): {', '.join(SCENARIOS)}; "
                             f"default: {', '.join(DEFAULT_SCENARIOS)}")
    parser.add_argument("--target", action="append", choices=TARGETS, dest="targets",
                        help=f"run this target only (repeatable; default: all of {', '.join(TARGETS)})")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="rounds; each runs every scenario against every target (default 3)")
    parser.add_argument("--quick", action="store_true", help="bench_server.py's smoke-run sizes")
    parser.add_argument("--settle", type=float, default=10.0, metavar="SECONDS",
                        help="before each run, wait up to this long for the machine to be quiet "
                             "(0: do not wait; default 10)")
    bench_server.add_retries_option(parser)
    parser.add_argument("--json", metavar="FILE", help="also save every result as JSON")
    bench_server.add_redis_server_option(parser)
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for every chat server, e.g. --server-arg=--log-level=WARNING")
    return parser


def main(argv: list | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = build_parser().parse_args(argv[1:])
    if args.rounds < 1 or args.retries < 0:
        print("--rounds must be at least 1 and --retries at least 0", file=sys.stderr)
        return 2
    if not os.access(args.redis_server, os.X_OK):
        print(f"redis-server not found at {args.redis_server} (use --redis-server PATH)",
              file=sys.stderr)
        return 2
    args.targets = [t for t in TARGETS if t in (args.targets or TARGETS)]
    cases = cases_for(args.scenario or list(DEFAULT_SCENARIOS), args.quick)
    info = bench_server.run_info(
        machine=f"{bench_server.cpu_model()}, {os.cpu_count()} cores",
        python=sys.version.split()[0],
        redis=bench_server.redis_version(args.redis_server),
        argv=argv,
    )
    print("\n".join([
        *bench_server.header_lines(
            "Cluster mode benchmark: standalone vs a cluster of 1 and of 2 nodes on Redis", info),
        f"node:     {shlex.join(['python'] + Cluster(1, args.redis_server, args.server_arg).command[1:])}",
        f"redis:    {shlex.join(RedisServer(args.redis_server).command)} (one per run, port: a free one)",
    ]), flush=True)
    try:
        runs = run_rounds(cases, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    info["load_average_after"] = bench_server.load_average()
    print()
    print(report(cases, runs, args, info))
    print(f"load avg: {info['load_average_after']} (after the run)")
    failures = [f"{name} / {target} round {r['round']}: {r.get('error')}"
                for name, by in runs.items() for target, results in by.items()
                for r in results if not r.get("ok")]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": info, "runs": runs, "verdicts": judge(cases, runs),
                       "failures": failures}, f, indent=2)
        print(f"results saved to {args.json}")
    return bench_server.report_failures(failures)


if __name__ == "__main__":
    sys.exit(main())
