"""Benchmark: our chat server against Redis pub/sub and the seed's design, under the same load.

Not a test (pytest does not collect it); run it from the repository root:

    python tests/benchmarks/bench_server.py [--scenario NAME ...] [--quick]
                                            [--repeat N] [--json FILE]

For every scenario it starts a fresh server (``python -m reactor`` with flood
control, the idle timeout and eviction out of the way), a fresh
``redis-server`` (persistence off) and, where the comparison means something
(ping, latency, connections), the seed's thread-per-client server
(``seed_threads.py``), each on a free port; it runs the same load generator
(``loadgen.py``, a separate process) against each, stops them, and prints
one table: each server's figure, the ratios ours/Redis and ours/seed, the
measured window, and the CPU seconds of the server and of the generator in
that window, so a generator that is the bottleneck shows.  With ``--repeat
N`` the servers take turns round by round (ours, redis, seed, ours, ...);
every round is printed and saved, with each figure's median, and the goals
of issue 16 are judged on those medians.  Every delivery is checked (count,
order per sender, nothing damaged or extra); a failed check, a crash or a
timeout makes the run exit 1 with a message saying which.  See README.md
beside this file for what each scenario measures.

The TLS scenarios (``fanout-tls``, ``handshakes-tls``, ``connections-tls``;
named, or all three with ``--tls``) run both servers TLS-only with one
certificate that ``trustme`` makes for the run in a temporary directory, and
the generator speaks TLS to both, verifying it.

Standard library only (and ``trustme`` for the TLS scenarios); Linux
(/proc, epoll).  Needs ``redis-server`` on the PATH (or ``--redis-server
PATH``); ``--no-redis`` and ``--no-seed`` leave those peers out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import select
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
LOADGEN = HERE / "loadgen.py"
SEED = HERE / "seed_threads.py"

MAX_OUTPUT = 64 * 1024 * 1024
"""--max-output for our server: no benchmark client is ever a slow consumer."""
MAX_CLIENTS = 20000
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

PLAIN_SCENARIOS = ("fanout-small", "fanout-wide", "latency", "connections", "ping")
TLS_SCENARIOS = ("fanout-tls", "handshakes-tls", "connections-tls")
SCENARIOS = PLAIN_SCENARIOS + TLS_SCENARIOS
"""Without --scenario the plaintext ones run; --tls adds (or, alone, runs) the TLS ones."""
TLS_KEY_TYPES = ("ecdsa", "rsa")
HANDSHAKES_PARALLEL = 8  # handshakes-tls: connections in progress at once
TIMED_EVERY = 10  # latency: time every 10th receiver's deliveries; one read per delivery for all
                  # 99 recipients is more than one Python generator process can do at 200 msg/s


# -- what to run -------------------------------------------------------------------


class Target:
    """A goal of issue 16, judged on the median of the rounds.

    ``peer`` names the server the figure is compared with (``ours / peer``
    against ``limit``); ``None`` means ours alone against ``limit``, in the
    row's own unit.  The row's goal says which way: ``min`` means at most.
    """

    def __init__(self, peer: str | None, limit: float, text: str) -> None:
        self.peer = peer
        self.limit = limit
        self.text = text

    def judge(self, goal: str, ours, peer) -> dict:
        """The figure judged (the ratio, or ours), whether it is met, and the margin."""
        if not isinstance(ours, (int, float)):
            return {"figure": None, "met": None, "margin": None}
        if self.peer is None:
            figure = ours
        elif isinstance(peer, (int, float)) and peer:
            figure = ours / peer
        else:
            return {"figure": None, "met": None, "margin": None}
        met = figure <= self.limit if goal == "min" else figure >= self.limit
        # how far from the limit, as a share of it: positive is missed by that much
        margin = (figure - self.limit) / self.limit if goal == "min" else (self.limit - figure) / self.limit
        return {"figure": figure, "met": met, "margin": margin}


class Row:
    """One metric line of the table."""

    def __init__(self, label: str, key: str, fmt: str, goal: str,
                 target: Target | None = None) -> None:
        self.label = label
        self.key = key
        self.fmt = fmt  # format spec for the value
        self.goal = goal  # "max" or "min": which way is better
        self.target = target  # the issue-16 goal on this figure, if any


TARGETS = ("ours", "redis", "seed")
"""Every server the benchmark knows, in the order each round runs them."""
PEER_TARGETS = ("redis", "seed")


class Case:
    """One load-generator run per target (or ``--repeat`` of them).

    ``peers``: whom this case runs besides ours.  The seed's thread-per-client
    server speaks only plaintext chat, and its fan-out (one ``sendall`` per
    recipient under a lock) is slow enough to double a full run, so it runs
    where the comparison means something: ping, latency, connections (and
    fan-out with ``--seed-fanout``).
    """

    def __init__(self, scenario: str, name: str, args: list, rows: list,
                 timeout: float, cpu_note: str = "", tls: bool = False,
                 peers: tuple = ("redis",)) -> None:
        self.scenario = scenario
        self.name = name
        self.args = [str(a) for a in args]
        self.rows = rows
        self.timeout = timeout
        self.cpu_note = cpu_note
        self.tls = tls  # both servers serve TLS only, and the generator speaks it
        self.peers = peers


AT_MOST_REDIS = Target("redis", 1.0, "ours/redis <= 1")
FANOUT_ROWS = [Row("deliveries/s", "deliveries_per_s", ",.0f", "max",
                   Target("redis", 1.0, "ours/redis >= 1"))]
TLS_FANOUT_ROWS = [Row("deliveries/s", "deliveries_per_s", ",.0f", "max")]
LATENCY_ROWS = [
    Row("p50 ms", "p50_ms", ".3f", "min"),
    Row("p99 ms", "p99_ms", ".3f", "min", AT_MOST_REDIS),
    Row("p99.9 ms", "p999_ms", ".3f", "min"),
]
MEMORY_GOAL_KIB = 1.5
"""Issue 16: 10,000 idle logged-in connections at 1.5 KiB each or less."""


def connection_rows(clients: int | None) -> list:
    """The connections rows; the login target is at 5,000, the memory one at 10,000."""
    return [
        Row("login s", "login_s", ".3f", "min", AT_MOST_REDIS if clients == 5000 else None),
        Row("KiB/conn", "kib_per_conn", ".2f", "min"),
        Row("KiB/conn idle", "kib_per_conn_idle", ".2f", "min",
            Target(None, MEMORY_GOAL_KIB, f"<= {MEMORY_GOAL_KIB} KiB") if clients == 10000 else None),
        Row("idle CPU s", "idle_server_cpu_precise_s", ".4f", "min"),
    ]


PING_ROWS = [
    Row("p50 us", "p50_us", ".1f", "min", Target("seed", 1.1, "ours/seed <= 1.1")),
    Row("p99 us", "p99_us", ".1f", "min"),
]
HANDSHAKE_ROWS = [  # the first row picks the median run: the server's capacity, not the generator's
    Row("per server CPU s", "handshakes_per_server_cpu_s", ",.0f", "max"),
    Row("handshakes/s", "handshakes_per_s", ",.0f", "max"),
    Row("p50 ms", "p50_ms", ".2f", "min"),
    Row("p99 ms", "p99_ms", ".2f", "min"),
]


def plan(quick: bool, max_pending: int | None = None, seed_fanout: bool = False) -> dict:
    """Scenario name -> its cases; ``quick`` shrinks every one for a smoke run.

    ``max_pending``: connections in progress at once in the connections
    scenarios (default: the generator's, somaxconn).  ``seed_fanout``: the
    seed's server runs in the fan-out scenarios too."""
    both = ("redis", "seed")
    fanout_peers = both if seed_fanout else ("redis",)
    pending = [] if max_pending is None else ["--max-pending", max_pending]
    messages_small = 200 if quick else 2000
    messages_wide = 50 if quick else 200
    duration = 2 if quick else 5
    idle = 2 if quick else 10
    conns = [1000] if quick else [5000, 10000]
    pings, warmup = (2000, 200) if quick else (20000, 2000)
    handshakes, handshake_warmup = (200, 20) if quick else (2000, 100)
    tls_conns = 1000 if quick else 5000
    return {
        "fanout-small": [
            Case("fanout-small", "fanout-small",
                 ["fanout", "--clients", 100, "--senders", 10, "--messages", messages_small],
                 FANOUT_ROWS, 300, peers=fanout_peers),
        ],
        "fanout-wide": [
            Case("fanout-wide", "fanout-wide",
                 ["fanout", "--clients", 1000, "--senders", 5, "--messages", messages_wide],
                 FANOUT_ROWS, 300, peers=fanout_peers),
        ],
        "latency": [
            Case("latency", f"latency {rate}/s",
                 ["latency", "--clients", 100, "--senders", 10, "--rate", rate,
                  "--duration", duration, "--timed-every", TIMED_EVERY],
                 LATENCY_ROWS, duration + 180, peers=both)
            for rate in (200, 20)
        ],
        "connections": [
            Case("connections", f"connections {n}",
                 ["connections", "--clients", n, "--idle", idle, *pending],
                 connection_rows(n), idle + 300, cpu_note="CPU columns: the login phase",
                 peers=both)
            for n in conns
        ],
        "ping": [
            Case("ping", "ping", ["ping", "--count", pings, "--warmup", warmup],
                 PING_ROWS, 300, peers=both),
        ],
        "fanout-tls": [
            Case("fanout-tls", "fanout-tls",
                 ["fanout", "--clients", 100, "--senders", 10, "--messages", messages_small],
                 TLS_FANOUT_ROWS, 300, tls=True),
        ],
        "handshakes-tls": [
            Case("handshakes-tls", "handshakes-tls",
                 ["handshakes", "--count", handshakes, "--warmup", handshake_warmup,
                  "--parallel", HANDSHAKES_PARALLEL],
                 HANDSHAKE_ROWS, 300, tls=True),
        ],
        "connections-tls": [
            Case("connections-tls", f"connections-tls {tls_conns}",
                 ["connections", "--clients", tls_conns, "--idle", idle, *pending],
                 connection_rows(None), idle + 300, cpu_note="CPU columns: the login phase",
                 tls=True),
        ],
    }


# -- the servers -------------------------------------------------------------------


class ServerError(Exception):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return socket.SOMAXCONN


class TLSFiles:
    """A private CA and a certificate for 127.0.0.1 and localhost, made for this run.

    ``trustme`` (the test extra) writes them to a temporary directory that
    ``close`` removes: no key outlives the run.  Both servers serve the same
    certificate; the generator trusts the CA and checks the name.
    """

    def __init__(self, key_type: str = "ecdsa") -> None:
        try:
            import trustme
        except ImportError:
            raise ServerError(
                "the TLS scenarios need trustme to make their certificates "
                "(pip install trustme; it is in the test extra)"
            ) from None
        kind = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
        self.key_type = key_type
        self.describe = ("RSA 2048" if key_type == "rsa" else "ECDSA P-256") + \
            " certificate and CA made by trustme " + getattr(trustme, "__version__", "")
        self._dir = tempfile.TemporaryDirectory(prefix="bench-tls-")
        folder = pathlib.Path(self._dir.name)
        ca = trustme.CA(key_type=kind)
        leaf = ca.issue_cert("127.0.0.1", "localhost", key_type=kind)
        self.ca = str(folder / "ca.pem")
        self.cert = str(folder / "cert.pem")
        self.key = str(folder / "key.pem")
        ca.cert_pem.write_to_path(self.ca)
        leaf.private_key_pem.write_to_path(self.key)
        with open(self.cert, "wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)

    def close(self) -> None:
        self._dir.cleanup()


class Server:
    """A server subprocess with its log in a temporary file."""

    label = "?"
    tls: TLSFiles | None = None

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        self.log.seek(0)
        text = self.log.read().decode("utf-8", "replace").splitlines()
        return "\n".join("    " + line for line in text[-lines:])

    def log_has(self, needle: bytes) -> bool:
        self.log.seek(0)
        return needle in self.log.read()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(
                f"{self.label} server exited with status {self.proc.returncode} "
                f"during the run; its last log lines:\n{self.log_tail()}"
            )

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; the exit status."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                print(f"warning: {self.label} server ignored SIGTERM for "
                      f"{STOP_TIMEOUT:.0f} s; killed", file=sys.stderr)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode


class ChatServer(Server):
    label = "our"

    def __init__(self, extra: list, tls: TLSFiles | None = None) -> None:
        super().__init__()
        self.tls = tls
        self.command = [
            sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0",
            "--rate", "0", "--idle-timeout", "0", "--max-clients", str(MAX_CLIENTS),
            "--max-output", str(MAX_OUTPUT), *extra,
        ]
        if tls is not None:  # TLS only, on a port of the kernel's choosing
            self.command += ["--tls-cert", tls.cert, "--tls-key", tls.key,
                             "--tls-port", "0", "--tls-only"]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self.log,
        )
        deadline = time.monotonic() + START_TIMEOUT
        seen = b""
        fd = self.proc.stdout.fileno()
        started = rb"TLS on port (\d+)" if self.tls is not None else rb"Chat server started on port (\d+)"
        while True:
            match = re.search(started, seen)
            if match:
                self.port = int(match.group(1))
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise ServerError(
                    f"{self.label} server did not print its startup line within {START_TIMEOUT:.0f} s"
                )
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    status = self.proc.wait()
                    self.proc = None
                    raise ServerError(
                        f"{self.label} server exited with status {status} before listening:\n"
                        f"{self.log_tail()}"
                    )
                seen += chunk


class SeedServer(ChatServer):
    """The seed's design, a thread per client blocked in ``recv`` (``seed_threads.py``).

    Plaintext chat only, no options: it has no flood control, idle timeout
    or output limit to turn off.  It prints the same startup line as ours.
    SIGTERM ends it at once (Python's default action; its threads are
    daemons), so its exit status is not checked.
    """

    label = "seed"

    def __init__(self) -> None:
        Server.__init__(self)
        self.tls = None
        self.command = [sys.executable, str(SEED)]


class RedisServer(Server):
    label = "redis"

    def __init__(self, binary: str, tls: TLSFiles | None = None) -> None:
        super().__init__()
        self.binary = binary
        self.tls = tls
        self.port = free_port()
        if tls is None:
            ports = ["--port", str(self.port)]
        else:
            # TLS only (--port 0), clients unauthenticated, as ours.  No
            # --tls-ca-cert-file: OpenSSL would build the chain from it and
            # send the CA's certificate too; without it both servers send the
            # same one certificate, and the client does the same work for both.
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls.cert,
                     "--tls-key-file", tls.key, "--tls-auth-clients", "no"]
        self.command = [
            binary, "--save", "", "--appendonly", "no", *ports,
            "--bind", "127.0.0.1", "--daemonize", "no", "--protected-mode", "no",
            "--maxclients", str(MAX_CLIENTS),
            # The same listen backlog as our server (listen(SOMAXCONN), capped
            # by the kernel); Redis's default of 511 would drop SYNs under the
            # connections scenario and measure the 1 s retransmission timer.
            "--tcp-backlog", str(somaxconn()),
            "--loglevel", "warning",
        ]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                status = self.proc.returncode
                self.proc = None
                raise ServerError(
                    f"redis-server exited with status {status} at start:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    conn = s if self.tls is None else self.tls.client_context().wrap_socket(
                        s, server_hostname="127.0.0.1")
                    with conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(64).startswith(b"+PONG"):
                            return
            except OSError:  # ssl.SSLError too
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"redis-server did not answer PING within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown ({error})"


# -- one run -------------------------------------------------------------------------


def run_loadgen(server: Server, proto: str, case: Case) -> dict:
    """Run the generator against a started server; stop the server; the JSON result."""
    tls = ["--tls", "--tls-ca", server.tls.ca] if server.tls is not None else []
    command = [
        sys.executable, str(LOADGEN), "--proto", proto, "--port", str(server.port),
        "--server-pid", str(server.pid), "--hold", *tls, *case.args,
    ]
    err = tempfile.TemporaryFile()
    gen = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    line = b""
    problem = None
    try:
        deadline = time.monotonic() + case.timeout
        fd = gen.stdout.fileno()
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                problem = f"the load generator gave no result within {case.timeout:.0f} s"
                break
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                line += chunk
        try:
            server.check_alive()
        except ServerError as error:
            problem = str(error)
    finally:
        # Stop the server while the generator still holds its connections:
        # closing 10,000 logged-in clients first would make our server
        # broadcast 10,000 INFO lines to everyone left.
        status = server.stop()
        try:
            gen.stdin.close()
        except OSError:
            pass
        try:
            gen.wait(30)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait()
        gen.stdout.close()
    err.seek(0)
    gen_err = err.read().decode("utf-8", "replace").strip()
    result: dict
    try:
        result = json.loads(line) if line.strip() else {}
    except ValueError:
        result = {}
    if not result:
        result = {"ok": False, "error": problem or "the load generator printed no result"}
        if gen_err:
            result["error"] += "; its stderr:\n" + "\n".join(
                "    " + s for s in gen_err.splitlines()[-15:]
            )
    elif problem:
        result["ok"] = False
        result["error"] = problem + (
            f"; the generator said: {result['error']}" if result.get("error") else "")
    extra = []
    if isinstance(server, ChatServer) and not isinstance(server, SeedServer) \
            and not problem and status not in (0, None):
        extra.append(f"our server exited with status {status} on SIGTERM:\n{server.log_tail()}")
    if isinstance(server, ChatServer) and server.log_has(b"Traceback"):
        extra.append(f"{server.label} server logged a traceback:\n{server.log_tail(30)}")
    if extra:
        result["ok"] = False
        result["error"] = "; ".join(([result["error"]] if result.get("error") else []) + extra)
    result["server_command"] = shlex.join(server.command)
    return result


def machine_busy() -> float:
    """CPU seconds the whole machine has spent (all cores; /proc/stat)."""
    with open("/proc/stat", "rb") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def settle(limit: float, threshold: float = 0.25) -> float | None:
    """Wait (at most ``limit`` s) until the machine is quiet: under ``threshold``
    of a core busy over half a second.  Other work on a 2-core machine skews
    every figure.  Returns the load still seen if it never got quiet."""
    if limit <= 0:
        return None
    until = time.monotonic() + limit
    told = False
    while True:
        b0 = machine_busy()
        time.sleep(0.5)
        load = (machine_busy() - b0) / 0.5
        if load < threshold:
            return None
        if time.monotonic() > until:
            print(f"  machine still busy ({load:.0%} of a core); running anyway",
                  file=sys.stderr, flush=True)
            return load
        if not told:
            print(f"  waiting for the machine to settle ({load:.0%} of a core busy)...",
                  file=sys.stderr, flush=True)
            told = True


NOISY = 0.3
"""A run is noisy when the rest of the machine used this share of a core
during its window (see ``notes_for``); noisy runs are retried."""


def other_load(result: dict) -> float:
    window = result.get("window_s") or 0
    other = result.get("other_cpu_s") or 0
    return other / window if window > 0 else 0.0


def make_server(target: str, args, tls: TLSFiles | None = None) -> Server:
    if target == "ours":
        return ChatServer(args.server_arg, tls)
    if target == "redis":
        return RedisServer(args.redis_server, tls)
    return SeedServer()


def least_disturbed(run, retries: int, tag: str) -> dict:
    """``run()``, again while other programs used ``NOISY`` of a core or more
    during it (at most ``retries`` times); the least disturbed result counts.
    Each result gets ``tries``; a failed run ends it at once (a failure is a
    finding, not noise: report it).  Both benchmark drivers retry this way."""
    best = None
    for trial in range(1 + retries):
        result = run()
        result["tries"] = trial + 1
        if not result.get("ok"):
            return result
        if best is None or other_load(result) < other_load(best):
            best = result
        if other_load(result) < NOISY:
            break
        if trial < retries:
            print(f"  {tag} other load {other_load(result):.0%} of a core during the run; "
                  f"running it again", file=sys.stderr, flush=True)
    best["tries"] = trial + 1
    return best


def run_once(case: Case, target: str, args, tag: str) -> dict:
    """One fresh server, one generator run; retried while other load skews it."""
    return least_disturbed(lambda: run_fresh(case, target, args, tag), args.retries, tag)


def run_fresh(case: Case, target: str, args, tag: str) -> dict:
    """Wait for a quiet machine, start a fresh server, run the generator once."""
    busy = settle(args.settle)
    tls = args.tls_files if case.tls else None
    server = make_server(target, args, tls)
    print(f"  {tag} running...", file=sys.stderr, flush=True)
    try:
        server.start()
    except ServerError as error:
        return {"ok": False, "error": str(error)}
    try:
        result = run_loadgen(server, "redis" if target == "redis" else "chat", case)
    finally:
        server.stop()
    result["busy_before"] = busy
    return result


def run_case(case: Case, targets: list, args) -> dict:
    """Every target of ``targets`` this case runs, ``--repeat`` times each, round by round.

    A round runs each target once, in ``TARGETS`` order (ours, redis, seed),
    each on a fresh server, so slow drifts in the machine's load fall on all
    of them alike.  ``runs`` keeps every round; ``chosen`` is the median run
    by the case's first metric (what the table shows); ``medians`` is each
    figure's own median over the rounds that passed, and ``targets`` the
    issue-16 goals judged on those medians."""
    targets = [t for t in targets if t == "ours" or t in case.peers]
    runs: dict = {target: [] for target in targets}
    for attempt in range(args.repeat):
        for target in targets:
            tag = f"[{case.name} / {target}" + (
                f" {attempt + 1}/{args.repeat}]" if args.repeat > 1 else "]")
            result = run_once(case, target, args, tag)
            result["round"] = attempt + 1
            runs[target].append(result)
            if not result.get("ok"):
                print(f"  {tag} FAILED: {result.get('error')}", file=sys.stderr, flush=True)
    chosen = {}
    for target, results in runs.items():
        good = [r for r in results if r.get("ok")]
        if len(good) < len(results):
            chosen[target] = next(r for r in results if not r.get("ok"))
            continue
        key = case.rows[0].key
        good.sort(key=lambda r: r.get(key) or 0)
        chosen[target] = good[(len(good) - 1) // 2]  # the median run by the first metric
    medians = {target: medians_of(case, results) for target, results in runs.items()}
    return {"case": case.name, "scenario": case.scenario, "args": case.args,
            "chosen": chosen, "runs": runs, "medians": medians,
            "targets": judge_targets(case, medians)}


def medians_of(case: Case, results: list) -> dict:
    """Each row's median over the runs that passed (None when none did)."""
    return {row.key: median_of(results, row.key) for row in case.rows}


def median_of(results: list, key: str):
    """``key``'s median over the runs that passed and have it (None when none do)."""
    values = [r[key] for r in results if r.get("ok") and isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def judge_targets(case: Case, medians: dict) -> list:
    """The case's goals, each judged on the medians of the rounds."""
    judged = []
    for row in case.rows:
        target = row.target
        if target is None:
            continue
        ours = (medians.get("ours") or {}).get(row.key)
        peer = (medians.get(target.peer) or {}).get(row.key) if target.peer else None
        verdict = target.judge(row.goal, ours, peer)
        judged.append({"case": case.name, "metric": row.label, "key": row.key,
                       "goal": row.goal, "target": target.text, "peer": target.peer,
                       "limit": target.limit, "ours": ours, "peer_value": peer,
                       "fmt": row.fmt, **verdict})
    return judged


# -- the report ----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


WAKEUP_SAMPLES = 1000
WAKEUP_INTERVAL = 0.002


def wakeup_floor(samples: int = WAKEUP_SAMPLES) -> str:
    """The machine's own cross-process wake-up latency, no server involved.

    A child process blocks in ``epoll`` on a socket pair; every
    ``WAKEUP_INTERVAL`` s the parent writes its clock to it.  Each delivery
    in the latency scenario needs at least two such wake-ups (the server's,
    then the receiver's), so this is a floor under any server's tail on this
    machine.  On a virtual machine an idle vCPU can take milliseconds to be
    scheduled again.
    """
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: wait, stamp, report
        code = 1
        try:
            parent.close()
            poller = select.epoll()
            poller.register(child.fileno(), select.EPOLLIN)
            late = []
            partial = b""  # a stamp cut in two by a read
            while len(late) < samples and poller.poll(5.0):
                now = time.perf_counter_ns()
                *stamps, partial = (partial + child.recv(4096)).split(b" ")
                late.extend(now - int(stamp) for stamp in stamps)
            late.sort()
            child.sendall(json.dumps(late).encode() + b"\n")
            code = 0
        finally:
            os._exit(code)
    child.close()
    try:
        for _ in range(samples):
            time.sleep(WAKEUP_INTERVAL)
            parent.sendall(b"%d " % time.perf_counter_ns())
        parent.settimeout(10.0)
        data = b""
        while not data.endswith(b"\n"):
            chunk = parent.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        late = json.loads(data) if data.endswith(b"\n") else []
    except (OSError, ValueError):
        late = []
    finally:
        parent.close()
        os.waitpid(pid, 0)
    if not late:
        return "not measured"
    us = [late[min(len(late) - 1, int(q * len(late)))] / 1000 for q in (0.5, 0.99, 0.999)]
    return (f"p50 {us[0]:.0f} us, p99 {us[1]:.0f} us, p99.9 {us[2]:.0f} us "
            f"({len(late)} wake-ups of a process blocked in epoll, no server)")


def meta(args, argv: list) -> dict:
    info = run_info(
        machine=f"{cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
        python=f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        redis=redis_version(args.redis_server) if not args.no_redis else "not run",
        argv=argv,
    )
    info["ulimit_n"] = _nofile()
    info["wakeup"] = wakeup_floor()
    info["openssl"] = openssl_versions(args)
    return info


def run_info(machine: str, python: str, redis: str, argv: list) -> dict:
    """The facts every benchmark driver records about a run, in the order
    ``header_lines`` prints them (and its JSON keeps them)."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "python": python,
        "redis": redis,
        "commit": git_describe(),
        "command": shlex.join([os.path.basename(sys.executable)] + argv),
        "load_average_before": load_average(),
    }


def header_lines(title: str, info: dict, load_note: str = "") -> list:
    """A report's first lines: ``title``, then ``run_info``'s facts, one a line."""
    return [
        title,
        f"date:     {info['date']}",
        f"machine:  {info['machine']}",
        f"python:   {info['python']}",
        f"redis:    {info['redis']}",
        f"commit:   {info['commit']}",
        f"command:  {info['command']}",
        f"load avg: {info['load_average_before']} (before the run){load_note}",
    ]


def report_failures(failures: list) -> int:
    """The failures on stderr, after the report; the exit status (1 if any)."""
    if not failures:
        return 0
    print("\nFAILED:", file=sys.stderr)
    for failure in failures:
        print(f"  {failure}", file=sys.stderr)
    return 1


def openssl_versions(args) -> str:
    """Which OpenSSL each side uses: Python's ``ssl`` (ours, the generator) and redis-server's."""
    text = f"Python's ssl: {ssl.OPENSSL_VERSION}"
    if args.no_redis:
        return text
    try:
        out = subprocess.run(["ldd", args.redis_server], capture_output=True, text=True,
                             timeout=10).stdout
        libssl = next((line.split()[0] + " => " + line.split()[2] for line in out.splitlines()
                       if "libssl" in line and "=>" in line), "no libssl in ldd's list")
    except (OSError, subprocess.SubprocessError, IndexError):
        libssl = "unknown (ldd failed)"
    return text + f"; redis-server: {libssl}"


def _nofile() -> str:
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return f"{soft} (hard {hard})"
    except (ImportError, OSError, ValueError):
        return "unknown"


def fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def joined(values: list, spec: str) -> str:
    """``a / b / c`` for the targets' window and CPU columns."""
    return " / ".join(fmt(v, spec) for v in values)


def ratio(a, b) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return f"{a / b:.2f}"
    return "-"


def notes_for(result: dict, who: str) -> str:
    """``who: note, note`` for the notes column, or an empty string."""
    if not result:
        return ""
    if not result.get("ok"):
        return f"{who}: FAILED"
    notes = []
    window = result.get("window_s") or 0
    other = 0.0
    if window >= 0.2:  # CPU figures have 10 ms steps: no verdict on a shorter window
        gen = (result.get("gen_cpu_s") or 0) / window
        srv = (result.get("server_cpu_s") or 0) / window
        other = (result.get("other_cpu_s") or 0) / window
        if gen >= 0.9:
            notes.append(f"generator-bound (gen {gen:.0%} busy)")
        elif gen >= 0.75:
            notes.append(f"gen {gen:.0%} busy")
        if srv >= 0.9:
            notes.append(f"server {srv:.0%} busy")
        if other >= NOISY:
            notes.append(f"other load {other:.0%} of a core")
    if result.get("busy_before") and other < NOISY:
        notes.append(f"machine busy before ({result['busy_before']:.0%} of a core)")
    if (result.get("tries") or 1) > 1:
        notes.append(f"least disturbed of {result['tries']} runs")
    if result.get("fell_behind"):
        notes.append(f"gen behind schedule ({result.get('late_sends')} sends >2 ms late)")
    return f"{who}: {', '.join(notes)}" if notes else ""


def present_targets(cases: list) -> list:
    """The targets that ran in any case, in ``TARGETS`` order."""
    seen = {target for entry in cases for target in entry["runs"]}
    return [target for target in TARGETS if target in seen]


def render_table(header: list, lines: list, right: set) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in lines)) for i in range(len(header))]

    def render(cells):
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule] + [render(r) for r in lines])


def cell(result: dict, key: str, spec: str) -> str:
    """A figure of one run: ``FAIL`` for a failed run, ``-`` for a target that did not run."""
    if not result:
        return "-"
    if not result.get("ok"):
        return "FAIL"
    return fmt(result.get(key), spec)


def table(cases: list) -> str:
    """The median run of each case (by its first metric), one column per server."""
    targets = present_targets(cases)
    letters = " / ".join(t[0] for t in targets)
    peers = [t for t in targets if t != "ours"]
    header = (["scenario", "metric", "goal", *targets, *(f"ours/{p}" for p in peers),
               f"window s ({letters})", f"server CPU s ({letters})", f"gen CPU s ({letters})",
               "notes"])
    lines = []
    for entry in cases:
        chosen = {t: entry["chosen"].get(t) or {} for t in targets}
        case = entry["case_obj"]
        for n, row in enumerate(case.rows):
            values = {t: chosen[t].get(row.key) if chosen[t].get("ok") else None for t in targets}
            cells = [entry["case"] if n == 0 else "", row.label, row.goal]
            cells += [cell(chosen[t], row.key, row.fmt) for t in targets]
            cells += [ratio(values["ours"], values[p]) for p in peers]
            if n == 0:
                cells += [
                    joined([chosen[t].get("window_s") for t in targets], ".3f"),
                    joined([chosen[t].get("server_cpu_s") for t in targets], ".2f"),
                    joined([chosen[t].get("gen_cpu_s") for t in targets], ".2f"),
                    "; ".join(n for n in (notes_for(chosen[t], t) for t in targets) if n),
                ]
            else:
                cells += ["", "", "", ""]
            lines.append(cells)
    return render_table(header, lines, set(range(3, 3 + len(targets) + len(peers))))


def rounds_table(cases: list) -> str:
    """Every round of every case, each figure of each server, and each figure's median."""
    repeat = max(len(runs) for entry in cases for runs in entry["runs"].values())
    header = ["scenario", "metric", "server", *(f"round {i + 1}" for i in range(repeat)), "median"]
    lines = []
    for entry in cases:
        case = entry["case_obj"]
        first = True
        for row in case.rows:
            for target, runs in entry["runs"].items():
                cells = [entry["case"] if first else "", row.label, target]
                cells += [cell(r, row.key, row.fmt) for r in runs]
                cells += [""] * (repeat - len(runs))
                cells.append(fmt(entry["medians"][target].get(row.key), row.fmt))
                lines.append(cells)
                first = False
    return render_table(header, lines, set(range(3, 4 + repeat)))


def targets_table(cases: list) -> str:
    """The issue-16 goals, judged on the medians of the rounds; empty if none ran."""
    lines = []
    for entry in cases:
        for t in entry["targets"]:
            if t["met"] is None:
                verdict = "not judged (a server did not run or failed)"
            elif t["met"]:
                verdict = "met"
            else:
                verdict = f"MISSED by {t['margin']:.0%}"
            lines.append([
                f"{t['case']} {t['metric']}", t["target"], fmt(t["ours"], t["fmt"]),
                f"{t['peer']} {fmt(t['peer_value'], t['fmt'])}" if t["peer"] else "-",
                fmt(t["figure"], ".2f"), verdict,
            ])
    if not lines:
        return ""
    return render_table(["figure", "target", "ours", "peer", "judged", "verdict"], lines, {2, 4})


def tls_note(result: dict) -> str:
    """What a TLS run negotiated, for its details line."""
    if not result.get("tls_version"):
        return ""
    ticket = "a session ticket" if result.get("tls_session_ticket") else "no session ticket"
    return f"; {result['tls_version']} {result.get('tls_cipher')}, {ticket} from the server"


def details(cases: list) -> str:
    out = []
    for entry in cases:
        for target in TARGETS:
            r = entry["chosen"].get(target)
            if not r or not r.get("ok"):
                continue
            mode = r.get("mode")
            if mode == "fanout":
                out.append(
                    f"{entry['case']:<18} {target:<5}  {r['expected_deliveries']:,} deliveries "
                    f"checked in order; senders done after {fmt((r.get('send_s') or 0) * 1e3, '.1f')} ms; "
                    f"login {r['login_s']:.3f} s; other CPU {fmt(r.get('other_cpu_s'), '.2f')} s"
                    f"{tls_note(r)}"
                )
            elif mode == "latency":
                out.append(
                    f"{entry['case']:<18} {target:<5}  {r['deliveries']:,} deliveries timed "
                    f"(every {TIMED_EVERY}th receiver: {r.get('timed_receivers')}), all checked; "
                    f"max {r['max_ms']:.2f} ms; offered {fmt(r.get('offered_msgs_per_s'), '.0f')} msg/s; "
                    f"schedule lag p50/p99/max {r['schedule_lag_p50_ms']:.2f}/"
                    f"{r['schedule_lag_p99_ms']:.2f}/{r['schedule_lag_max_ms']:.2f} ms, "
                    f"{r['late_sends']} sends >2 ms late; other CPU {fmt(r.get('other_cpu_s'), '.2f')} s"
                )
            elif mode == "connections":
                out.append(
                    f"{entry['case']:<18} {target:<5}  RSS {r['rss_before_kib']:,} -> "
                    f"{r['rss_after_kib']:,} KiB ({r['rss_after_idle_kib']:,} after idle); "
                    f"{r['logins_per_s']:,.0f} logins/s, at most {r.get('max_pending')} in progress; idle {r['idle_s']:.1f} s: server CPU "
                    f"{r['idle_server_cpu_precise_s']:.4f} s (schedstat), "
                    f"{r['idle_server_cpu_s']:.2f} s (/proc stat){tls_note(r)}"
                )
            elif mode == "handshakes":
                out.append(
                    f"{entry['case']:<18} {target:<5}  {r['count']:,} full handshakes, "
                    f"{r['parallel']} at a time, each connect, handshake, PING, PONG, close; "
                    f"{r['resumed']} resumed; max {r['max_ms']:.2f} ms; server CPU "
                    f"{fmt(r.get('server_cpu_precise_s'), '.3f')} s (schedstat), "
                    f"{fmt(r.get('server_ms_per_handshake'), '.3f')} ms each{tls_note(r)}"
                )
            elif mode == "ping":
                out.append(
                    f"{entry['case']:<18} {target:<5}  {r['count']:,} round trips; p99.9 "
                    f"{r['p999_us']:.1f} us; mean {r['mean_us']:.1f} us; "
                    f"{r['round_trips_per_s']:,.0f}/s"
                )
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark our chat server against Redis pub/sub and the seed's thread-per-client server, under the same load.",
    )
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}; "
                             f"default: {', '.join(PLAIN_SCENARIOS)}")
    parser.add_argument("--tls", action="store_true",
                        help=f"run the TLS scenarios ({', '.join(TLS_SCENARIOS)}), besides any --scenario; "
                             "without either, the plaintext ones run")
    parser.add_argument("--quick", action="store_true",
                        help="shrink every scenario for a fast smoke run")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each case N times per server, round by round (ours, redis, seed, "
                             "ours, ...); the table shows the median run, then every round and "
                             "each figure's median")
    parser.add_argument("--json", metavar="FILE", help="also save every result as JSON")
    parser.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                        help="before each run, wait up to this long for other load on the "
                             "machine to stop (0: do not wait; default 20, 5 with --quick)")
    add_retries_option(parser)
    parser.add_argument("--no-redis", action="store_true", help="do not run Redis")
    parser.add_argument("--no-seed", action="store_true",
                        help="do not run the seed's thread-per-client server (seed_threads.py)")
    parser.add_argument("--seed-fanout", action="store_true",
                        help="run the seed's server in the fan-out scenarios too (slow: one "
                             "sendall per recipient)")
    add_redis_server_option(parser)
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for our server, e.g. --server-arg=--log-level=WARNING")
    parser.add_argument("--max-pending", type=int, default=None, metavar="N",
                        help="connections scenarios: at most N connections in progress at once "
                             "(default: somaxconn, the listen backlog's cap)")
    parser.add_argument("--tls-key-type", choices=TLS_KEY_TYPES, default="ecdsa",
                        help="the TLS scenarios' certificate key: ecdsa (P-256, the default) or "
                             "rsa (2048 bits)")
    return parser


def add_retries_option(parser: argparse.ArgumentParser) -> None:
    """``--retries``, for ``least_disturbed``; both benchmark drivers take it."""
    parser.add_argument("--retries", type=int, default=2, metavar="N",
                        help="run a case again, up to N times, when other programs used "
                             f"{NOISY * 100:.0f}%% of a core or more during it; the least disturbed "
                             "run counts (default 2)")


def add_redis_server_option(parser: argparse.ArgumentParser) -> None:
    """``--redis-server``: the one on the PATH unless told otherwise."""
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server",
                        metavar="PATH", help="the redis-server binary")


def main(argv: list | None = None) -> int:
    argv = sys.argv if argv is None else argv
    args = build_parser().parse_args(argv[1:])
    if args.repeat < 1 or args.retries < 0 or (args.max_pending is not None and args.max_pending < 1):
        print("--repeat and --max-pending must be at least 1 and --retries at least 0", file=sys.stderr)
        return 2
    if not args.no_redis and not os.access(args.redis_server, os.X_OK):
        print(f"redis-server not found at {args.redis_server} (use --redis-server PATH "
              f"or --no-redis)", file=sys.stderr)
        return 2
    if args.settle is None:
        args.settle = 5.0 if args.quick else 20.0
    chosen = list(args.scenario or ([] if args.tls else PLAIN_SCENARIOS))
    if args.tls:
        chosen += TLS_SCENARIOS
    cases = [case for name in SCENARIOS if name in chosen
             for case in plan(args.quick, args.max_pending, args.seed_fanout)[name]]
    args.tls_files = None
    if any(case.tls for case in cases):
        try:
            args.tls_files = TLSFiles(args.tls_key_type)
        except ServerError as error:
            print(f"{error}; or leave the TLS scenarios out (--scenario NAME)", file=sys.stderr)
            return 2
    try:
        return run_all(args, argv, cases)
    finally:
        if args.tls_files is not None:
            args.tls_files.close()


def run_all(args, argv: list, cases: list) -> int:
    """Run ``cases`` against every target; print the header, the table and the details."""
    targets = [t for t in TARGETS if not (t == "redis" and args.no_redis or t == "seed" and args.no_seed)]
    info = meta(args, argv)
    head = header_lines(
        "Chat server benchmark: ours vs Redis pub/sub and the seed's thread-per-client server, "
        "same load generator",
        info, f"; ulimit -n {info['ulimit_n']}",
    )
    head += [
        f"wake-up:  {info['wakeup']}",
        f"ours:     {shlex.join(['python'] + ChatServer(args.server_arg).command[1:])}",
    ]
    if not args.no_redis:
        head.append(f"redis:    {shlex.join(RedisServer(args.redis_server).command)} "
                    f"(port: a free one)")
    if not args.no_seed:
        head.append(f"seed:     python {SEED.relative_to(ROOT)} (thread per client; ping, latency, "
                    f"connections{', fan-out' if args.seed_fanout else ''})")
    tls = args.tls_files
    if tls is not None:
        head += [
            f"tls:      {tls.describe}; {info['openssl']}",
            f"ours/tls: {shlex.join(['python'] + ChatServer(args.server_arg, tls).command[1:])}",
        ]
        if not args.no_redis:
            head.append(f"redis/tls: {shlex.join(RedisServer(args.redis_server, tls).command)}")
        head.append("           (files in a temporary directory, removed after the run)")
    print("\n".join(head), flush=True)
    print(file=sys.stderr)
    results = []
    failures = []
    try:
        for case in cases:
            entry = run_case(case, targets, args)
            entry["case_obj"] = case
            results.append(entry)
            for target, r in entry["chosen"].items():
                if not r.get("ok"):
                    failures.append(f"{case.name} / {target}: {r.get('error')}")
    except KeyboardInterrupt:
        print("\ninterrupted; partial results:", file=sys.stderr)
    print()
    if results:
        print(table(results))
        print()
        print(
            "ours/redis, ours/seed: below 1 is better for a 'min' metric, above 1 for a 'max' one. "
            "window: first send to last delivery\n(connections: first connect to last OK; "
            "its CPU columns are the login phase). CPU from /proc/PID/stat and os.times(), "
            "10 ms resolution.\nThe table shows the median run of each case by its first metric."
        )
        print()
        print("Every round (in the order run: each round runs ours, redis, seed in turn; "
              "median: each figure's own, over the rounds that passed):")
        print(rounds_table(results))
        judged = targets_table(results)
        if judged:
            print()
            print("Targets (issue 16), on the medians of the rounds:")
            print(judged)
        text = details(results)
        if text:
            print()
            print(text)
    if args.json:
        data = {
            "meta": info,
            "cases": [{k: v for k, v in e.items() if k != "case_obj"} for e in results],
            "targets": [t for e in results for t in e["targets"]],
            "failures": failures,
        }
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
        print(f"\nresults saved to {args.json}")
    return report_failures(failures)


if __name__ == "__main__":
    sys.exit(main())
