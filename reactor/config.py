"""The daemon's settings: command line + environment -> one frozen ``Config``.

This module owns one decision: what the ``chat-server`` process was asked to
do.  It either returns a validated, immutable ``Config`` or stops the process
with exit status 2 and one short message naming the flag or environment
variable at fault (argparse's usage line comes first), never a traceback.  It
does not bind sockets, log, or start anything; the reactor does all of that
with the ``Config`` it is handed, so a bad value stops the server before it
binds.

Theory of operation
-------------------
Every setting is one row of ``_SETTINGS``: its ``Config`` field, its flag,
its environment variable (or none), and its converter.  A value has three
possible sources, in this order of precedence:

1. the flag.  argparse parses it with the setting's converter as its
   ``type``; its default is ``None`` so that "not given" stays distinguishable
   from "given the default value";
2. the environment variable, read only for settings the command line left
   unset (so a stale, bad ``PORT`` never blocks ``--port 5000``).  Leading
   and trailing whitespace is stripped (``.env`` files leave a stray ``\\r``),
   and a variable that is then empty counts as unset.  The host's variable
   is ``CHAT_HOST``, not ``HOST``: tcsh and zsh set ``HOST`` to the
   machine's name, which would silently bind that one address;
3. the field's default in ``Config``, the one place defaults are written.

The flag and the variable go through the same converter, so they obey one
rule and fail with one message text; only the prefix differs
(``argument --port:`` or ``environment variable PORT:``).  Converters accept
plain ASCII decimal notation only: Python's own ``int()`` and ``float()``
would also take ``1_000``, Arabic-Indic digits and ``nan``, none of which an
operator means as a port or a timeout.

``--host`` is the one setting that takes several values: the flag may be
repeated, and each value (the variable's too) may be a comma-separated
list.  ``Config.host`` keeps them as one comma-separated string, in order
and without repeats, and ``Config.hosts`` splits it; a comma never occurs
in a host name or an IP address.

Cluster mode's settings (``--cluster`` and the flags that only mean
something with it) are checked together after each is converted: a
cluster flag without ``--cluster``, or ``--workers`` above 1 without it, is
exit 2 like a bad value, and so is ``--cluster`` when the ``cluster`` extra
(hiredis) is not installed, so the operator learns it before the server
binds.  ``Config.cluster`` holds the parsed ``RedisAddress``, never the URL's
text: its ``repr`` hides the password, so neither does a ``Config`` show it,
and a refusal of ``--cluster`` quotes the URL only when it holds no ``@``
(so no credentials).

Imports: the standard library, ``protocol`` (for ``__version__``), and
``reactor.engine``'s address parser and hiredis probe, which import neither
hiredis nor anything outside the standard library.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import protocol

from .engine.address import URL_FORMS, RedisAddress, parse_redis_url
from .engine.resp import INSTALL_HINT, hiredis_available

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_CLUSTER_BUFFER",
    "DEFAULT_CLUSTER_LEASE",
    "DEFAULT_CLUSTER_NAME",
    "DEFAULT_HOST",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_PORT",
    "DEFAULT_RATE",
    "DEFAULT_STATS_INTERVAL",
    "DEFAULT_TLS_PORT",
    "DEFAULT_WORKERS",
    "LOG_LEVELS",
    "PROG",
    "Config",
    "build_parser",
    "parse_config",
]

PROG = "chat-server"

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 4000
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_CLIENTS = 10000
DEFAULT_MAX_LINE = 4096
DEFAULT_MAX_OUTPUT = 1048576
DEFAULT_RATE = 50.0
DEFAULT_BURST = 100
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_STATS_INTERVAL = 0.0
DEFAULT_TLS_PORT = 4443
DEFAULT_CLUSTER_NAME = "chat"
DEFAULT_CLUSTER_LEASE = 10.0
DEFAULT_CLUSTER_BUFFER = 16 * 1024 * 1024
DEFAULT_WORKERS = 1

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon was asked to do, already validated.

    The constructor does not validate (``parse_config`` does), so tests and
    embedders can build any ``Config`` they need directly.
    """

    host: str = DEFAULT_HOST  # one address, or several separated by commas
    port: int = DEFAULT_PORT  # 0 = any free port
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT  # seconds, 0 = off
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_line: int = DEFAULT_MAX_LINE  # bytes before the LF
    max_output: int = DEFAULT_MAX_OUTPUT  # bytes of unsent output
    rate: float = DEFAULT_RATE  # lines per second, 0 = flood control off
    burst: int = DEFAULT_BURST
    log_level: str = DEFAULT_LOG_LEVEL  # one of LOG_LEVELS
    stats_interval: float = DEFAULT_STATS_INTERVAL  # seconds between statistics lines, 0 = none
    tls_cert: str | None = None  # PEM certificate chain; TLS is on when it is set
    tls_key: str | None = None  # PEM private key; None: it is in the certificate file
    tls_port: int = DEFAULT_TLS_PORT  # used only with a certificate
    tls_only: bool = False  # with a certificate: no plaintext port at all
    cluster: RedisAddress | None = None  # the engine; None = standalone
    cluster_name: str = DEFAULT_CLUSTER_NAME  # the prefix of every key
    cluster_lease: float = DEFAULT_CLUSTER_LEASE  # seconds a node's users outlive its last contact
    cluster_buffer: int = DEFAULT_CLUSTER_BUFFER  # memory for lines waiting for the engine, at most
    workers: int = DEFAULT_WORKERS  # node processes sharing the port (Linux, cluster mode)

    @property
    def hosts(self) -> tuple[str, ...]:
        """The addresses to listen on, in the order given."""
        return tuple(self.host.split(","))


# -- converters: text -> value, or ArgumentTypeError with the rule broken ----

_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SHOWN_MAX = 40

Converter = Callable[[str], Any]


def _shown(text: str) -> str:
    """Quote a bad value for the message; repr keeps it on one line."""
    if len(text) > _SHOWN_MAX:
        return repr(text[:_SHOWN_MAX]) + "..."
    return repr(text)


def _refusal(rule: str, text: str) -> argparse.ArgumentTypeError:
    """The one error type argparse reports verbatim after ``argument --x:``."""
    return argparse.ArgumentTypeError(f"must be {rule}, got {_shown(text)}")


def _maybe_whole(text: str) -> int | None:
    """ASCII digits only; ``None`` for anything else.

    ``int()`` still fails on more than 4300 digits (Python 3.11+), hence the
    ``try``: such a number is out of every range anyway.
    """
    if not _WHOLE.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _maybe_finite(text: str) -> float | None:
    """Plain decimal notation, finite; ``1e999`` overflows to inf and fails."""
    if not _DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _whole_number(low: int, high: int | None = None) -> Converter:
    """A converter for an integer setting in ``low..high`` (no upper bound if None)."""
    if high is None:
        rule = f"a whole number >= {low}"
    else:
        rule = f"a whole number from {low} to {high}"

    def whole_number(text: str) -> int:
        value = _maybe_whole(text)
        if value is None or value < low or (high is not None and value > high):
            raise _refusal(rule, text)
        return value

    return whole_number


def _non_negative(rule: str) -> Converter:
    """A converter for a finite float >= 0; ``rule`` names what 0 means."""

    def non_negative(text: str) -> float:
        value = _maybe_finite(text)
        if value is None:  # the regex already refused a minus sign
            raise _refusal(rule, text)
        return value

    return non_negative


def _hosts(text: str) -> str:
    """One host, or several separated by commas: each non-empty, without spaces or control characters.

    Resolution happens at bind time; this only catches what can never be a
    host name or address (an empty ``--host ""``, a stray space, ``a,,b``).
    Repeats are dropped; the result is the canonical comma-separated form.
    """
    hosts: list[str] = []
    for host in text.split(","):
        if not host or not host.isprintable() or any(c.isspace() for c in host):
            raise _refusal("a host name or IP address, or several separated by commas (no spaces)", text)
        if host not in hosts:
            hosts.append(host)
    return ",".join(hosts)


def _positive(rule: str) -> Converter:
    """A converter for a finite float > 0."""

    def positive(text: str) -> float:
        value = _maybe_finite(text)
        if value is None or value <= 0:
            raise _refusal(rule, text)
        return value

    return positive


def _cluster_url(text: str) -> RedisAddress:
    """A ``--cluster`` URL; the refusal quotes it only if it holds no credentials (no ``@``)."""
    try:
        return parse_redis_url(text)
    except ValueError as error:
        shown = "" if "@" in text else f", got {_shown(text)}"
        raise argparse.ArgumentTypeError(f"must be {URL_FORMS}: {error}{shown}") from None


_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _cluster_name(text: str) -> str:
    """The key prefix: ASCII letters, digits, '.', '-', '_', so every key stays printable and unambiguous."""
    if not _CLUSTER_NAME.fullmatch(text):
        raise _refusal("1 to 64 ASCII letters, digits, '.', '-' or '_'", text)
    return text


def _file(text: str) -> str:
    """A path; whether it can be read is checked when it is loaded, before the server binds."""
    if not text or "\0" in text:
        raise _refusal("a file name", text)
    return text


def _switch(text: str) -> bool:
    """A variable that turns something on: 1, true, yes or on (any case); 0, false, no, off."""
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise _refusal("1, true, yes or on (or 0, false, no, off)", text)


def _log_level(text: str) -> str:
    """One of LOG_LEVELS in any ASCII case, stored upper-case.

    ASCII only because ``"ınfo".upper()`` (dotless i) is ``"INFO"`` too.
    """
    level = text.upper()
    if not text.isascii() or level not in LOG_LEVELS:
        raise _refusal(f"one of {', '.join(LOG_LEVELS)} (any case)", text)
    return level


# -- the settings table -------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    """One row of the configuration table in protocol.md."""

    field: str  # Config field and argparse dest
    env: str | None  # environment variable, None if the flag has none
    metavar: str
    convert: Converter
    help: str
    group: str
    shown_default: str | None = None  # when str(default) says too little
    repeatable: bool = False  # the flag may be given several times; the values add up
    switch: bool = False  # the flag takes no value: given, it turns the setting on

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


_LISTEN = "where to listen"
_TLS = "TLS (encryption; see docs/operations.md)"
_LIMITS = "limits"
_LOGGING = "logging"
_CLUSTER = "cluster mode (several nodes as one server; see docs/cluster.md)"

_SETTINGS = (
    _Setting(
        "host", "CHAT_HOST", "ADDRESS", _hosts,
        "address to listen on: an IP address or a host name; repeat the flag, "
        "or separate addresses with commas, to listen on several; "
        "'::' listens dual-stack on IPv6 and IPv4",
        _LISTEN,
        repeatable=True,
    ),
    _Setting(
        "port", "PORT", "PORT", _whole_number(0, MAX_PORT),
        f"TCP port, 0 to {MAX_PORT}; 0 takes any free port, which the "
        "startup line prints",
        _LISTEN,
    ),
    _Setting(
        "tls_cert", "CHAT_TLS_CERT", "FILE", _file,
        "serve TLS with this PEM certificate chain, beside plaintext, on "
        "--tls-port; SIGHUP reloads it and the key",
        _TLS,
        shown_default="none: no TLS",
    ),
    _Setting(
        "tls_key", "CHAT_TLS_KEY", "FILE", _file,
        "the certificate's PEM private key",
        _TLS,
        shown_default="in the --tls-cert file",
    ),
    _Setting(
        "tls_port", "CHAT_TLS_PORT", "PORT", _whole_number(0, MAX_PORT),
        "TCP port for TLS, on every --host",
        _TLS,
    ),
    _Setting(
        "tls_only", "CHAT_TLS_ONLY", "", _switch,
        "serve TLS alone: no plaintext port (--port is not used)",
        _TLS,
        switch=True,
        shown_default="off",
    ),
    _Setting(
        "idle_timeout", "IDLE_TIMEOUT", "SECONDS",
        _non_negative("a number of seconds >= 0 (0 turns it off)"),
        "close a connection that sends no complete line for this long; "
        "fractions allowed, 0 turns the idle timeout off",
        _LIMITS,
    ),
    _Setting(
        "max_clients", "MAX_CLIENTS", "N", _whole_number(1),
        "most connections open at once; one more gets ERR server-full. "
        "Lowered with a warning if the system allows fewer open files",
        _LIMITS,
    ),
    _Setting(
        "max_line", None, "BYTES", _whole_number(1),
        "longest line accepted, in bytes before the LF; a longer one gets "
        "ERR line-too-long",
        _LIMITS,
    ),
    _Setting(
        "max_output", None, "BYTES", _whole_number(1),
        "most bytes of unsent output a connection may hold before a message "
        "from another user disconnects it as a slow reader",
        _LIMITS,
        shown_default="1048576 = 1 MiB",
    ),
    _Setting(
        "rate", None, "PER_SECOND",
        _non_negative("a number >= 0 (0 turns flood control off)"),
        "lines per second a connection may send on average; 0 turns flood "
        "control off",
        _LIMITS,
    ),
    _Setting(
        "burst", None, "LINES", _whole_number(1),
        "lines a connection may send at once before --rate paces it",
        _LIMITS,
    ),
    _Setting(
        "log_level", "LOG_LEVEL", "LEVEL", _log_level,
        f"{', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}, in any case",
        _LOGGING,
    ),
    _Setting(
        "stats_interval", None, "SECONDS",
        _non_negative("a number of seconds >= 0 (0 turns it off)"),
        "log a line of statistics (the one SIGUSR1 asks for) every SECONDS "
        "seconds; 0 turns it off",
        _LOGGING,
    ),
    _Setting(
        "cluster", "CHAT_CLUSTER", "URL", _cluster_url,
        f"be one node of a cluster that coordinates through Redis 6.2+ at URL: {URL_FORMS}; "
        "the password is never logged",
        _CLUSTER,
        shown_default="none: standalone",
    ),
    _Setting(
        "cluster_name", "CHAT_CLUSTER_NAME", "NAME", _cluster_name,
        "the prefix of every key, so several chat services can share one Redis: "
        "letters, digits, '.', '-', '_'",
        _CLUSTER,
    ),
    _Setting(
        "cluster_lease", None, "SECONDS", _positive("a number of seconds > 0"),
        "how long after a node's last contact with Redis its users are reported gone and "
        "their names freed; also how long a node rides out an unreachable Redis",
        _CLUSTER,
    ),
    _Setting(
        "cluster_buffer", None, "BYTES", _whole_number(1),
        "most memory a node spends on lines waiting for Redis (their bytes and "
        "about 256 bytes of bookkeeping each); past it, senders are paused, not dropped",
        _CLUSTER,
        shown_default="16777216 = 16 MiB",
    ),
    _Setting(
        "workers", None, "N", _whole_number(1),
        "start N node processes sharing the port (SO_REUSEPORT); N > 1 needs --cluster "
        "and Linux",
        _CLUSTER,
    ),
)

_NEEDS_CLUSTER = ("cluster_name", "cluster_lease", "cluster_buffer")
"""Settings that mean something only in cluster mode."""

# -- the parser ----------------------------------------------------------------

_DESCRIPTION = """\
A multi-user TCP chat server. Anyone who can reach the port connects with a
line-based TCP client (telnet, nc), logs in with LOGIN <name>, and then sends
MSG <text> to everyone, DM <name> <text> to one user, WHO, PING or QUIT. One
thread runs a selectors event loop around a pure protocol machine; limits on
line length, unsent output and line rate keep any one client from slowing the
others down. Every setting is a flag; those that name a variable can also be
set from the environment, and the flag wins over the variable."""

_EPILOG = """\
examples:
  chat-server --port 5000
  PORT=5000 chat-server
  chat-server --host 127.0.0.1 --idle-timeout 300
  chat-server --host ::
  chat-server --host 127.0.0.1 --host ::1
  CHAT_HOST=127.0.0.1,::1 chat-server
  chat-server --stats-interval 3600
  chat-server --tls-cert fullchain.pem --tls-key privkey.pem
  chat-server --tls-cert fullchain.pem --tls-key privkey.pem --tls-only --tls-port 6697
  chat-server --cluster redis://127.0.0.1:6379/0
  CHAT_CLUSTER=redis://:password@redis.internal/0 chat-server --workers 4

`--host ::` listens dual-stack, on IPv6 and IPv4 at once; the default 0.0.0.0
is IPv4 only. Where IPv6 is not available, `--host ::` listens on IPv4 alone
(with a warning) and an IPv6 address fails with exit status 1. The host's
variable is CHAT_HOST: HOST is not read, since shells set it to the machine's
name. An empty environment variable counts as unset.

With --tls-cert the server speaks TLS 1.2 or newer on --tls-port (4443) beside
plaintext on --port; --tls-only drops plaintext. A bad or unreadable
certificate or key stops the server before it binds (exit status 2); SIGHUP
reloads both without a restart, and keeps the old ones if the new ones fail.

SIGUSR1 logs one line of statistics. Under systemd, Type=notify and socket
activation (LISTEN_FDS, which replaces --host and --port) work as they are:
see docs/operations.md, "Running it as a service".

With --cluster the server is one node of a cluster: nodes on one machine or
many, behind any TCP load balancer, that share names, WHO and one order of
messages through Redis 6.2 or newer (or Valkey), as if they were one server.
It needs the cluster extra: pip install "chat-reactor[cluster]". The URL is
redis://[user:password@]host[:port][/db] or unix:///path[?db=N], with the
password percent-encoded; it is never logged. rediss:// (TLS to Redis) is
not supported. --workers N (Linux) starts N nodes sharing one port, so one
command uses every core: a parent process prints the startup line once every
worker is in the cluster, passes SIGINT, SIGTERM, SIGHUP and SIGUSR1 on to
them, restarts a worker that dies, and exits 0 once all have shut down.
Worker log lines start with [worker K]; see docs/cluster.md.

exit status: 0 after a shutdown (SIGINT, SIGTERM); 1 when it cannot listen;
2 for a bad flag or variable, or a Python older than 3.10."""


def _show_default(value: object) -> str:
    """60.0 reads better as 60 in a help line."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _help_line(setting: _Setting) -> str:
    default = setting.shown_default or _show_default(
        getattr(Config(), setting.field)
    )
    if setting.env is None:
        return f"{setting.help} (default {default})"
    return f"{setting.help} (env {setting.env}, default {default})"


def build_parser() -> argparse.ArgumentParser:
    """The ``chat-server`` parser; every setting defaults to ``None`` (not given).

    ``allow_abbrev=False`` so ``--max`` is an error rather than whichever
    ``--max-*`` flag exists today: a script must not change meaning when a
    flag is added.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {protocol.__version__}"
    )
    groups: dict[str, Any] = {}
    for setting in _SETTINGS:
        if setting.group not in groups:
            groups[setting.group] = parser.add_argument_group(setting.group)
        if setting.switch:
            groups[setting.group].add_argument(
                setting.flag, dest=setting.field, action="store_const", const=True, default=None,
                help=_help_line(setting),
            )
            continue
        groups[setting.group].add_argument(
            setting.flag,
            dest=setting.field,
            type=setting.convert,
            action="append" if setting.repeatable else "store",
            default=None,
            metavar=setting.metavar,
            help=_help_line(setting),
        )
    return parser


# -- resolution: flag > environment > default ---------------------------------


def _maybe_from_env(
    parser: argparse.ArgumentParser, setting: _Setting, environ: Mapping[str, str]
) -> Any | None:
    """The variable's value, ``None`` if unset or blank; exits 2 if it is bad."""
    if setting.env is None:
        return None
    text = environ.get(setting.env, "").strip()
    if not text:
        return None
    try:
        return setting.convert(text)
    except argparse.ArgumentTypeError as error:
        parser.error(f"environment variable {setting.env}: {error}")


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """The ``Config`` for this process, or ``SystemExit(2)`` after one message.

    ``argv`` excludes the program name (``sys.argv[1:]`` when None);
    ``environ`` defaults to ``os.environ``.  ``--help`` and ``--version``
    print and raise ``SystemExit(0)``.
    """
    parser = build_parser()
    given = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    env = os.environ if environ is None else environ
    values = {}
    named = {}  # field -> how the message names its source: "argument --x" or "environment variable X"
    for setting in _SETTINGS:
        value = getattr(given, setting.field)
        if setting.repeatable and value is not None:
            value = setting.convert(",".join(value))  # the flags' values, joined, without repeats
        named[setting.field] = f"argument {setting.flag}"
        if value is None:
            value = _maybe_from_env(parser, setting, env)
            if value is not None:
                named[setting.field] = f"environment variable {setting.env}"
        if value is not None:
            values[setting.field] = value
    _check_cluster(parser, values, named)
    if "tls_cert" not in values:
        for needs_cert in ("tls_key", "tls_port", "tls_only"):
            if values.get(needs_cert):
                flag = "--" + needs_cert.replace("_", "-")
                parser.error(f"argument {flag}: TLS needs a certificate: give --tls-cert too")
    return Config(**values)


def _check_cluster(parser: argparse.ArgumentParser, values: dict[str, Any], named: dict[str, str]) -> None:
    """Cluster settings that make sense only together; exit 2 naming the first that does not."""
    if "cluster" not in values:
        for field in _NEEDS_CLUSTER:
            if field in values:
                parser.error(f"{named[field]}: only means something in cluster mode: give --cluster too")
        if values.get("workers", 1) > 1:
            parser.error(f"{named['workers']}: more than 1 worker needs --cluster")
        return
    if values.get("workers", 1) > 1 and not sys.platform.startswith("linux"):
        parser.error(f"{named['workers']}: more than 1 worker needs Linux (SO_REUSEPORT)")
    if values.get("cluster_buffer", DEFAULT_CLUSTER_BUFFER) < values.get("max_line", DEFAULT_MAX_LINE):
        parser.error(
            f"{named['cluster_buffer']}: must be at least --max-line "
            f"({values.get('max_line', DEFAULT_MAX_LINE)} bytes), or a long line could never be sent"
        )
    if not hiredis_available():
        parser.error(f"{named['cluster']}: {INSTALL_HINT}")
