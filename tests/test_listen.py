"""Where the daemon listens: several ``--host`` values, dual-stack ``::``, and machines without IPv6.

Layers: ``reactor.daemon.listen`` in this process (the socket options it
sets, the port shared between hosts); the real daemon with IPv4 and IPv6
clients; and the two ways a machine lacks IPv6, each as real as this
machine allows:

- no IPv6 in the kernel (booted with ``ipv6.disable=1``): ``socket(AF_INET6)``
  fails with ``EAFNOSUPPORT``.  The daemon runs with ``socket.socket``
  replaced by one that fails exactly so for ``AF_INET6``;
- IPv6 turned off by sysctl (``disable_ipv6``, as Docker does for networks
  without IPv6): sockets exist, but no interface has an IPv6 address.  The
  daemon runs in a new network namespace (``unshare``) with that sysctl
  set, when this machine allows creating one.
"""

from __future__ import annotations

import errno
import json
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
from netutil import ROOT, TIMEOUT, Client, ServerProcess, login

from reactor.config import Config
from reactor.daemon import StartupError, listen


def ipv6_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = ipv6_works()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this machine has no IPv6 (the tests of its absence run)")


def run_daemon(*args: str, command: list[str] | None = None) -> subprocess.CompletedProcess:
    """The daemon expected to exit by itself (a startup error)."""
    return subprocess.run(
        (command or [sys.executable, "-m", "reactor"]) + list(args),
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )


# -- listen() in this process ------------------------------------------------------


def test_dual_stack_turns_ipv6_v6only_off_explicitly_and_takes_both_families():
    listeners = listen(Config(host="::", port=0))
    try:
        if not HAS_IPV6:  # the fallback, tested for real below
            assert [s.family for s in listeners] == [socket.AF_INET]
            return
        (listener,) = listeners
        assert listener.family == socket.AF_INET6
        assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = listener.getsockname()[1]
        listener.settimeout(TIMEOUT)
        for address in ("127.0.0.1", "::1"):
            with socket.create_connection((address, port), timeout=TIMEOUT):
                peer, _ = listener.accept()
                peer.close()
    finally:
        for listener in listeners:
            listener.close()


@needs_ipv6
def test_an_ipv6_address_alone_takes_no_ipv4_clients():
    (listener,) = listen(Config(host="::1", port=0))
    with listener:
        assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


@needs_ipv6
def test_several_hosts_with_port_0_share_one_port():
    listeners = listen(Config(host="127.0.0.1,::1", port=0))
    try:
        addresses = [s.getsockname()[:2] for s in listeners]
        assert [host for host, _ in addresses] == ["127.0.0.1", "::1"]
        assert addresses[0][1] == addresses[1][1] != 0
    finally:
        for listener in listeners:
            listener.close()


@needs_ipv6
def test_where_a_socket_cannot_be_dual_stack_host_dual_stack_takes_two_sockets(monkeypatch):
    """OpenBSD refuses to turn IPV6_V6ONLY off: :: then listens on :: and 0.0.0.0, one port."""

    class NoDualStackSocket(socket.socket):
        def setsockopt(self, level, option, value, *rest):
            if (level, option, value) == (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0):
                raise OSError(errno.ENOPROTOOPT, "Protocol not available")
            return super().setsockopt(level, option, value, *rest)

    monkeypatch.setattr(socket, "socket", NoDualStackSocket)
    listeners = listen(Config(host="::", port=0))
    try:
        assert [s.family for s in listeners] == [socket.AF_INET6, socket.AF_INET]
        assert listeners[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        (_, port, *_), (ipv4_host, ipv4_port) = (s.getsockname() for s in listeners)
        assert (ipv4_host, ipv4_port) == ("0.0.0.0", port)
    finally:
        for listener in listeners:
            listener.close()


def test_a_later_host_that_an_earlier_one_covers_is_one_clear_error():
    with pytest.raises(StartupError) as info:
        listen(Config(host="0.0.0.0,127.0.0.1", port=0))
    assert info.value.status == 1
    assert "127.0.0.1 port " in str(info.value)
    assert "does an earlier --host cover it?" in str(info.value)


# -- the daemon, with real clients ------------------------------------------------------


@needs_ipv6
def test_host_dual_stack_serves_ipv4_and_ipv6_users_together():
    server = ServerProcess("--host", "::", "--port", "0")
    try:
        alice = login(server.port, "alice")  # IPv4, through the IPv4-mapped address
        bob = Client(server.port, host="::1")
        bob.say("LOGIN bob")
        bob.expect("OK")
        alice.say("MSG hello from IPv4")
        bob.expect("MSG alice hello from IPv4")
        bob.say("MSG hello from IPv6")
        alice.expect("MSG bob hello from IPv6")
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0
    assert "anyone who can reach port" in err.decode()  # :: is every interface


@needs_ipv6
@pytest.mark.parametrize("how", ["flags", "variable"])
def test_several_hosts_from_repeated_flags_or_a_comma_list(how):
    if how == "flags":
        server = ServerProcess("--host", "127.0.0.1", "--host", "::1", "--port", "0")
    else:
        server = ServerProcess("--port", "0", env={"CHAT_HOST": "127.0.0.1,::1"})
    try:
        ipv4 = login(server.port, "four")
        ipv6 = Client(server.port, host="::1")
        ipv6.say("LOGIN six", "WHO")
        ipv6.expect("OK", "USER four", "USER six")
        ipv4.sync()
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0
    log = err.decode()
    assert f"Listening on 127.0.0.1:{server.port}, [::1]:{server.port}\n" in log
    assert "anyone who can reach" not in log


def test_host_variable_is_ignored_by_the_daemon():
    server = ServerProcess("--port", "0", env={"HOST": "10.255.255.1", "CHAT_HOST": "127.0.0.1"})
    try:
        login(server.port, "ann").sync()
        status, _, _ = server.stop()
    finally:
        server.kill()
    assert status == 0


# -- no IPv6 in the kernel: socket(AF_INET6) fails with EAFNOSUPPORT ------------------------

WITHOUT_IPV6 = textwrap.dedent("""\
    import errno, os, runpy, socket
    class NoIPv6Socket(socket.socket):
        def __init__(self, family=-1, *args, **kwargs):
            if family == socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
            super().__init__(family, *args, **kwargs)
    socket.socket = NoIPv6Socket
    socket.has_ipv6 = False
    runpy.run_module("reactor", run_name="__main__", alter_sys=True)
""")


def test_without_ipv6_host_dual_stack_listens_on_ipv4_with_a_warning():
    server = ServerProcess("--host", "::", "--port", "0", command=[sys.executable, "-c", WITHOUT_IPV6])
    try:
        login(server.port, "ann").sync()
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0
    log = err.decode()
    assert "WARNING: IPv6 is not available on this system: --host :: listens on IPv4 only, at 0.0.0.0\n" in log
    assert f"anyone who can reach port {server.port} can join" in log
    assert "Traceback" not in log


def test_without_ipv6_an_ipv6_address_is_one_line_and_exit_1():
    result = run_daemon("--host", "::1", "--port", "0", command=[sys.executable, "-c", WITHOUT_IPV6])
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "chat-server: error: cannot listen on ::1 port 0: IPv6 is not available on this system"
    ]


# -- IPv6 turned off by sysctl, in a network namespace of our own -------------------------------

IN_NAMESPACE = textwrap.dedent("""\
    import fcntl, json, re, socket, struct, subprocess, sys
    # Bring the namespace's loopback interface up (ip link set lo up).
    with socket.socket() as s:
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 0x1))
    for scope in ("all", "default", "lo"):
        with open(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6", "w") as f:
            f.write("1")
    report = {}
    server = subprocess.Popen([sys.executable, "-m", "reactor", "--host", "::", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = int(re.search(rb"port (\\d+)", server.stdout.readline()).group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"LOGIN ann\\n")
            report["ipv4 client"] = client.recv(100).decode()
        try:
            socket.create_connection(("::1", port), timeout=5).close()
            report["ipv6 client"] = "connected"
        except OSError as error:
            report["ipv6 client"] = error.errno
    finally:
        server.terminate()
        report["status"] = server.wait(10)
    alone = subprocess.run([sys.executable, "-m", "reactor", "--host", "::1", "--port", "0"],
                           capture_output=True, text=True, timeout=30)
    report["::1 status"], report["::1 stderr"] = alone.returncode, alone.stderr
    print(json.dumps(report))
""")


def namespace_command() -> list[str]:
    """``unshare`` into a new network namespace (and user namespace unless root); skip where not allowed."""
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are Linux's")
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed (Debian package util-linux)")
    for command in ([unshare, "-n"], [unshare, "-rn"]):
        if subprocess.run([*command, "true"], capture_output=True, timeout=30).returncode == 0:
            return command
    pytest.skip("this machine does not allow creating a network namespace (the EAFNOSUPPORT tests run)")


def test_with_ipv6_turned_off_by_sysctl_dual_stack_still_serves_ipv4():
    result = subprocess.run(
        [*namespace_command(), sys.executable, "-c", IN_NAMESPACE],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ipv4 client"] == "OK\n"
    assert report["ipv6 client"] in (errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.ECONNREFUSED)
    assert report["status"] == 0
    assert report["::1 status"] == 1
    assert report["::1 stderr"].splitlines() == [
        "chat-server: error: cannot listen on ::1 port 0: no network interface has that address"
    ]
