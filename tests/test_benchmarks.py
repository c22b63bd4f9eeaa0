"""The benchmark's load generator still works and still catches bad deliveries.

The benchmark itself is not a test (its figures are never asserted); these
tests keep its tools from rotting: every load-generator mode runs, tiny,
against the real server, in plain TCP and over TLS (and the TLS cases also
against ``redis-server`` with TLS, through the driver's own certificates
and server commands), and the delivery checker rejects each kind of bad
stream it exists to catch.  The load generator is Linux-only (epoll,
/proc), as its README says.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from netutil import ROOT, server_process
from tools import require

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the benchmark's load generator uses epoll and /proc"
)

BENCHMARKS = ROOT / "tests" / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_server  # noqa: E402
import loadgen  # noqa: E402


def run_loadgen(port: int, pid: int, *mode_args: str) -> dict:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "loadgen.py"), "--proto", "chat",
         "--port", str(port), "--server-pid", str(pid), *mode_args],
        capture_output=True,
        timeout=60,
    )
    assert completed.stdout, completed.stderr.decode(errors="replace")
    result = json.loads(completed.stdout)
    assert completed.returncode == (0 if result["ok"] else 1), completed.stderr
    return result


@pytest.mark.parametrize(
    "mode_args, expected",
    [
        (["fanout", "--clients", "20", "--senders", "3", "--messages", "50"],
         {"checked_deliveries": 3 * 50 * 19}),
        (["latency", "--clients", "20", "--senders", "2", "--rate", "50", "--duration", "0.4",
          "--timed-every", "5"],
         {"checked_deliveries": (20 - 1) * 2 * 20}),
        (["connections", "--clients", "50", "--idle", "0.2"], {"clients": 50}),
        (["ping", "--count", "200", "--warmup", "20"], {"count": 200}),
    ],
    ids=["fanout", "latency", "connections", "ping"],
)
def test_every_mode_runs_against_the_server_and_checks_its_deliveries(mode_args, expected):
    with server_process("--rate", "0", "--idle-timeout", "0", "--max-output", "67108864") as server:
        result = run_loadgen(server.port, server.process.pid, *mode_args)
    assert result["ok"], result.get("error")
    for key, value in expected.items():
        assert result[key] == value, key


def test_a_run_whose_deliveries_do_not_all_arrive_fails():
    """With flood control on, the server paces the senders: the run must not pass as complete."""
    with server_process("--rate", "1", "--burst", "5", "--idle-timeout", "0") as server:
        result = run_loadgen(
            server.port, server.process.pid,
            "latency", "--clients", "5", "--senders", "2", "--rate", "100", "--duration", "0.2",
            "--timeout", "1",
        )
    assert not result["ok"]
    assert "timed out" in result["error"]


# -- over TLS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files():
    """The driver's own certificates (trustme, in a temporary directory it removes)."""
    files = bench_server.TLSFiles()
    yield files
    files.close()


def tls_server(files, *args: str):
    return server_process(
        "--idle-timeout", "0", "--max-output", "67108864", "--tls-cert", files.cert,
        "--tls-key", files.key, "--tls-port", "0", "--tls-only", *args,
    )


@pytest.mark.parametrize(
    "mode_args, expected",
    [
        # 460 KB for each receiver: many 16 KiB records, several to a read
        (["fanout", "--clients", "10", "--senders", "3", "--messages", "2000"],
         {"checked_deliveries": 3 * 2000 * 9}),
        (["connections", "--clients", "50", "--idle", "0.2", "--max-pending", "10"],
         {"clients": 50, "max_pending": 10}),
        (["handshakes", "--count", "30", "--warmup", "2", "--parallel", "4"],
         {"count": 30, "resumed": 0}),
    ],
    ids=["fanout", "connections", "handshakes"],
)
def test_every_tls_mode_runs_against_the_server_and_checks_its_deliveries(tls_files, mode_args, expected):
    with tls_server(tls_files, "--rate", "0") as server:
        result = run_loadgen(server.tls_port, server.process.pid,
                             "--tls", "--tls-ca", tls_files.ca, *mode_args)
    assert result["ok"], result.get("error")
    assert result["tls_version"] in ("TLSv1.2", "TLSv1.3")
    for key, value in expected.items():
        assert result[key] == value, key


def test_decrypted_bytes_left_in_the_ssl_object_are_read(tls_files, monkeypatch, capsys):
    """Reads far smaller than a TLS record leave most of each record inside the SSL object,
    where epoll never looks: the run completes only if the generator reads them anyway."""
    monkeypatch.setattr(loadgen, "RECV_SIZE", 1000)
    with tls_server(tls_files, "--rate", "0") as server:
        status = loadgen.main([
            "--proto", "chat", "--port", str(server.tls_port), "--tls", "--tls-ca", tls_files.ca,
            "fanout", "--clients", "5", "--senders", "2", "--messages", "1000", "--timeout", "10",
        ])
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and result["ok"], result.get("error")
    assert result["checked_deliveries"] == 2 * 1000 * 4


def test_a_tls_run_whose_deliveries_do_not_all_arrive_fails(tls_files):
    """Flood control paces the senders: the fanout over TLS must not pass as complete."""
    with tls_server(tls_files, "--rate", "1", "--burst", "5") as server:
        result = run_loadgen(
            server.tls_port, server.process.pid, "--tls", "--tls-ca", tls_files.ca,
            "fanout", "--clients", "5", "--senders", "2", "--messages", "50", "--timeout", "1",
        )
    assert not result["ok"]
    assert "timed out" in result["error"]


def test_the_generator_refuses_tls_where_it_cannot_speak_it():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "loadgen.py"), "--proto", "chat", "--port", "1",
         "--tls", "ping"],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 2 and "--tls works with" in completed.stderr


DRIVER_CASES = {
    "fanout": (["fanout", "--clients", 10, "--senders", 2, "--messages", 100],
               {"ours": {"checked_deliveries": 2 * 100 * 9}, "redis": {"checked_deliveries": 2 * 100 * 10}}),
    "connections": (["connections", "--clients", 40, "--idle", 0.2], {}),
    "handshakes": (["handshakes", "--count", 20, "--warmup", 2, "--parallel", 4], {}),
}


@pytest.mark.parametrize("mode", list(DRIVER_CASES))
@pytest.mark.parametrize("target", ["ours", "redis"])
def test_the_driver_runs_tls_cases_against_both_servers(tls_files, target, mode):
    """The driver's TLS server commands (ours --tls-only, redis-server --port 0 --tls-port)
    and the generator's verification of the run's CA, end to end."""
    args, expected = DRIVER_CASES[mode]
    case = bench_server.Case(mode, mode, args, [], 60, tls=True)
    if target == "ours":
        server = bench_server.ChatServer([], tls_files)
    else:
        server = bench_server.RedisServer(require("redis-server"), tls_files)
    server.start()
    try:
        result = bench_server.run_loadgen(server, "chat" if target == "ours" else "redis", case)
    finally:
        server.stop()
    assert result["ok"], result.get("error")
    assert result["tls_version"] in ("TLSv1.2", "TLSv1.3")
    for key, value in expected.get(target, {}).items():
        assert result[key] == value, key


# -- the seed's server as a peer, and rounds ------------------------------------------


@pytest.mark.parametrize("mode_args, expected", [
    (["ping", "--count", 200, "--warmup", 20], {"count": 200}),
    (["connections", "--clients", 40, "--idle", 0.2], {"clients": 40}),
    (["latency", "--clients", 10, "--senders", 2, "--rate", 50, "--duration", 0.3],
     {"checked_deliveries": 9 * 2 * 15}),
])
def test_the_driver_runs_the_seed_thread_per_client_server(mode_args, expected):
    """seed_threads.py starts, speaks enough chat for the generator, and its memory is read
    from its own /proc like ours; SIGTERM ends it and does not count as a failure."""
    case = bench_server.Case(mode_args[0], mode_args[0], mode_args, [], 60)
    server = bench_server.SeedServer()
    server.start()
    try:
        result = bench_server.run_loadgen(server, "chat", case)
    finally:
        server.stop()
    assert result["ok"], result.get("error")
    for key, value in expected.items():
        assert result[key] == value, key
    if mode_args[0] == "connections":
        assert result["rss_after_kib"] > result["rss_before_kib"]


class FakeArgs:
    repeat = 3


def test_rounds_interleave_the_servers_and_every_round_is_kept(monkeypatch):
    order = []
    figures = {"ours": [50.0, 40.0, 60.0], "redis": [30.0, 35.0, 25.0], "seed": [44.0, 40.0, 42.0]}

    def fake_run_once(case, target, args, tag):
        order.append(target)
        return {"ok": True, "mode": "ping", "p50_us": figures[target][order.count(target) - 1],
                "p99_us": 1.0}

    monkeypatch.setattr(bench_server, "run_once", fake_run_once)
    case = bench_server.plan(quick=True)["ping"][0]
    entry = bench_server.run_case(case, ["ours", "redis", "seed"], FakeArgs())
    assert order == ["ours", "redis", "seed"] * 3
    assert [r["p50_us"] for r in entry["runs"]["ours"]] == [50.0, 40.0, 60.0]
    assert [r["round"] for r in entry["runs"]["seed"]] == [1, 2, 3]
    assert entry["medians"]["ours"]["p50_us"] == 50.0 and entry["medians"]["seed"]["p50_us"] == 42.0
    (target,) = entry["targets"]
    assert target["peer"] == "seed" and target["met"] is False
    assert target["figure"] == pytest.approx(50 / 42)
    entry["case_obj"] = case
    rounds = bench_server.rounds_table([entry])
    assert "round 3" in rounds and "60.0" in rounds
    assert "MISSED by 8%" in bench_server.targets_table([entry])
    assert "ours/seed" in bench_server.table([entry])


def test_a_case_runs_only_the_peers_it_names(monkeypatch):
    order = []
    monkeypatch.setattr(bench_server, "run_once",
                        lambda case, target, args, tag: order.append(target) or {"ok": False})
    cases = bench_server.plan(quick=True)
    bench_server.run_case(cases["fanout-small"][0], ["ours", "redis", "seed"], FakeArgs())
    assert order == ["ours", "redis"] * 3
    order.clear()
    bench_server.run_case(cases["latency"][0], ["ours", "seed"], FakeArgs())  # --no-redis
    assert order == ["ours", "seed"] * 3
    seeded = bench_server.plan(quick=True, seed_fanout=True)["fanout-small"][0]
    assert seeded.peers == ("redis", "seed")


def test_targets_are_judged_on_the_right_side():
    at_most = bench_server.Target(None, 1.5, "<= 1.5 KiB")
    assert at_most.judge("min", 1.42, None)["met"] is True
    assert at_most.judge("min", 1.65, None)["margin"] == pytest.approx(0.1)
    at_least = bench_server.Target("redis", 1.0, ">= 1")
    assert at_least.judge("max", 2.0, 1.0)["met"] is True
    assert at_least.judge("max", 0.5, 1.0) == {"figure": 0.5, "met": False, "margin": 0.5}
    assert at_least.judge("max", 0.5, None)["met"] is None


# -- the delivery checker ------------------------------------------------------------


def stream(*deliveries) -> bytes:
    """Chat deliveries, each (sender id, seq) as the server would write them."""
    return b"".join(b"MSG u%d " % sid + loadgen.payload(sid, seq) + b"\n" for sid, seq in deliveries)


def check(data: bytes, expect: dict) -> tuple:
    errors: list = []
    found = loadgen.verify_stream(
        loadgen.Chat, data, expect, "receiver", errors, [b"%d" % n for n in range(10)]
    )
    return found, errors


def test_a_complete_stream_in_order_passes():
    assert check(stream((1, 0), (2, 0), (1, 1), (2, 1)), {b"1": 2, b"2": 2}) == (4, [])


@pytest.mark.parametrize(
    "data, problem",
    [
        (stream((1, 0)), "got 1 messages from sender 1, expected 2"),
        (stream((1, 0), (1, 1), (1, 1)), "got #1 where #2 was due"),
        (stream((1, 1), (1, 0)), "got #1 where #0 was due"),
        (stream((1, 0), (3, 0)), "unexpected line"),
        (stream((1, 0), (1, 1)).replace(b"MSG u1 #1:1", b"MSG u2 #1:1"), "unexpected line"),
        (stream((1, 0), (1, 1))[:-5] + b"\n", "damaged"),
        (stream((1, 0), (1, 1)) + b"INFO u9 disconnected\n", "damaged"),
    ],
    ids=["lost", "duplicated", "reordered", "foreign sender", "wrong name", "truncated", "extra line"],
)
def test_the_checker_catches_a_bad_stream(data, problem):
    _, errors = check(data, {b"1": 2})
    assert errors and problem in errors[0], errors


def test_nearest_rank_percentiles():
    values = list(range(1, 101))
    assert [loadgen.percentile(values, q) for q in (0.5, 0.99, 0.999, 1.0)] == [50, 99, 100, 100]
    assert loadgen.percentile([], 0.5) is None


def test_the_machine_wakeup_floor_is_measured():
    # In a process of its own: it forks, and this one has threads.
    completed = subprocess.run(
        [sys.executable, "-c", "import bench_server; print(bench_server.wakeup_floor(samples=20))"],
        cwd=BENCHMARKS, capture_output=True, text=True, timeout=60,
    )
    line = completed.stdout.strip()
    assert line.startswith("p50 ") and "(20 wake-ups" in line, (line, completed.stderr)


def test_the_ping_floor_server_answers_the_load_generator():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ping_floor.py"), "--count", "200", "--runs", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("ping floor (a bare selectors loop"), completed.stdout


def test_the_handshake_floor_times_our_server_context():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "handshake_floor.py"), "--count", "5", "--warmup", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("handshake floor (OpenSSL's server side alone"), completed.stdout
    assert "(5 handshakes)" in completed.stdout


def test_the_share_benchmark_runs_a_real_reactor():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_share.py"), "--users", "5", "--rounds", "20",
         "--trials", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Reactor._send_to" in completed.stdout and "stub sockets" in completed.stdout


# -- the attack benchmark -------------------------------------------------

import bench_attacks  # noqa: E402


def test_the_attack_benchmark_runs_its_scenarios_and_reports_every_figure(tmp_path):
    """A tiny idle storm and Telnet storm against the real server: nothing lost, every figure there."""
    out = tmp_path / "attacks.json"
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_attacks.py"), "--quick",
         "--scenario", "idle-storm", "--idle-clients", "40", "--idle-timeout", "1",
         "--scenario", "telnet-storm", "--duration", "0.5", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    cases = {case["case"]: case for case in json.loads(out.read_text())["cases"]}
    assert set(cases) == {"idle-storm 40", "telnet-storm 5xDO"}, list(cases)
    storm = cases["idle-storm 40"]
    assert storm["ok"] and storm["failures"] == []
    assert storm["figures"]["observer"]["count"] > 0
    assert storm["figures"]["close_after_deadline"]["min_s"] >= 0, "a victim was closed before its deadline"
    assert {c["figure"] for c in storm["checks"]} == {
        "observer PONG p99", "idle closes after their deadline, max"}
    telnet = cases["telnet-storm 5xDO"]
    assert telnet["figures"]["commands_sent"] > 0 and telnet["figures"]["server_cpu_s"] is not None
    assert "attack" in completed.stdout and "met?" in completed.stdout


def test_the_observer_checks_catch_lost_repeated_and_foreign_lines():
    stream = bench_attacks.ObserverStream()
    assert stream.feed(b"PONG\nDM feeder 0\nINFO v1 disconnected\nDM fee") == 1
    assert stream.feed(b"der 1\nPONG\nPONG\n") == 2
    assert (stream.pongs, stream.dms, stream.infos, stream.errors) == (3, 2, ["v1"], [])

    for data, problem in [
        (b"DM feeder 0\nDM feeder 2\n", "got DM #2 where #1 was due"),  # lost
        (b"DM feeder 0\nDM feeder 0\n", "got DM #0 where #1 was due"),  # repeated
        (b"DM feeder 1\nDM feeder 0\n", "got DM #1 where #0 was due"),  # reordered
        (b"MSG v1 hello\n", "unexpected line"),
        (b"ERR idle-timeout\n", "unexpected line"),
    ]:
        stream = bench_attacks.ObserverStream()
        stream.feed(data)
        assert stream.errors and problem in stream.errors[0], (data, stream.errors)


def test_the_observer_counts_a_lost_dm_once():
    stream = bench_attacks.ObserverStream()
    stream.feed(b"DM feeder 0\nDM feeder 2\nDM feeder 3\n")
    assert stream.dms == 4 and len(stream.errors) == 1


def test_percentiles_of_an_attack_window_count_only_its_pings():
    samples = [[0.0, 0.001], [1.0, 0.002], [1.5, 0.300], [2.0, 0.004]]
    inside = bench_attacks.window_stats(samples, 1.0, 2.0)
    assert inside == {"count": 2, "p50_ms": 2.0, "p99_ms": 300.0, "max_ms": 300.0, "max_at_s": 0.5}
    assert bench_attacks.window_stats(samples, 5.0, 6.0)["count"] == 0


def test_the_cluster_micro_benchmark_runs():
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_cluster.py"), "--users", "5", "--messages", "200",
         "--batch", "10", "--repeat", "1"],
        capture_output=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    assert b"node, MSG from the log" in completed.stdout
