"""Where the engine is: ``--cluster URL`` -> a ``RedisAddress`` that never shows its password.

Theory of operation
-------------------
Two forms are accepted, as ``docs/cluster.md`` (and the spec) write them::

    redis://[user:password@]host[:port][/db]      TCP, port 6379, database 0 by default
    unix://[user:password@]/path[?db=N]           a unix socket

``rediss://`` (TLS to the engine) is refused with its own message: the spec
puts TLS to the engine out of scope, and a URL that silently spoke plain
TCP where the operator asked for TLS would be worse than an error.

The user and password are percent-decoded (a password with ``@``, ``:`` or
``/`` must be written ``%40``, ``%3A``, ``%2F``, as in every URL).
``redis://:password@host`` gives a password alone, for ``requirepass``;
``redis://user:password@host`` an ACL user.  A user without a password is
refused: AUTH needs one, and ``redis://secret@host`` more likely holds a
password in the wrong place than a user name.

The password must never reach a log, a traceback or a terminal, so:

- ``RedisAddress``'s ``repr`` and ``str`` write it as ``***`` (a ``Config``
  that holds the address prints safely too);
- a ``ValueError`` from ``parse_redis_url`` never quotes any part of the
  URL.  An unencoded ``/`` or ``@`` in a password moves part of it into
  what looks like the host, the port or the path, so no part is safe to
  quote; the message says what is wrong and where, and the caller may
  show the URL itself only when it has no ``@`` (so no credentials).

Standard library only, and nothing that touches the network: resolving the
host is the link's business (``reactor.engine.link``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["DEFAULT_REDIS_PORT", "URL_FORMS", "RedisAddress", "parse_redis_url"]

DEFAULT_REDIS_PORT = 6379
URL_FORMS = "redis://[user:password@]host[:port][/db] or unix:///path[?db=N]"
"""What ``--cluster`` takes, for messages and ``--help``."""

_MAX_DB = 2**31 - 1  # Redis keeps the database index in an int
_DIGITS = re.compile(r"[0-9]{1,10}")
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")


@dataclass(frozen=True, repr=False)
class RedisAddress:
    """A parsed ``--cluster`` URL: a TCP host and port or a unix socket path, a database, credentials.

    Exactly one of ``host`` (with ``port``) and ``path`` is set.  Equality
    compares everything, the password included; ``repr`` and ``str`` never
    show the password.
    """

    host: str | None = None
    port: int = DEFAULT_REDIS_PORT
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def redacted(self) -> str:
        """The URL with the password as ``***``: the only form that is ever shown."""
        credentials = ""
        if self.password is not None:
            credentials = f"{self.username or ''}:***@"
        if self.path is not None:
            db = f"?db={self.db}" if self.db else ""
            return f"unix://{credentials}{self.path}{db}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"redis://{credentials}{host}:{self.port}/{self.db}"

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"RedisAddress({self.redacted!r})"


def parse_redis_url(text: str) -> RedisAddress:
    """Parse ``text`` (see the module doc); ``ValueError`` names the problem, never the URL's parts."""
    if not text:
        raise ValueError(f"the URL is empty: expected {URL_FORMS}")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("the URL contains a space or a control character")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower() if sep else ""
    if scheme == "rediss":
        raise ValueError(
            "rediss:// (TLS to Redis) is not supported: TLS to the engine is out of scope, "
            "use redis:// on a trusted network or a unix:// socket"
        )
    if scheme == "redis":
        return _parse_tcp(rest)
    if scheme == "unix":
        return _parse_unix(rest)
    raise ValueError(f"the URL must start with redis:// or unix://: expected {URL_FORMS}")


def _parse_tcp(rest: str) -> RedisAddress:
    """``[user:password@]host[:port][/db]``, the part after ``redis://``."""
    authority, path, query = _split(rest)
    if query is not None:
        raise ValueError("a redis:// URL takes no ?query: put the database after a slash (redis://host/2)")
    userinfo, at, hostport = authority.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    host, port = _host_and_port(hostport)
    db = 0
    if path not in ("", "/"):
        db = _db(path[1:], "the path after the host must be a database number (/0, /1, ...)")
    return RedisAddress(host=host, port=port, db=db, username=username, password=password)


def _parse_unix(rest: str) -> RedisAddress:
    """``[user:password@]/path[?db=N]``, the part after ``unix://``."""
    authority, path, query = _split(rest)
    userinfo, at, host = authority.rpartition("@")
    if host:
        raise ValueError("a unix:// URL takes an absolute path and no host: unix:///path/to/redis.sock")
    username, password = _credentials(userinfo) if at else (None, None)
    if len(path) < 2 or path.endswith("/"):
        raise ValueError("a unix:// URL needs the socket's absolute path: unix:///path/to/redis.sock")
    db = 0
    if query is not None:
        name, equals, value = query.partition("=")
        if name != "db" or not equals or "&" in value:
            raise ValueError("a unix:// URL takes one query parameter, ?db=N")
        db = _db(value, "?db= must be a database number (0, 1, ...)")
    return RedisAddress(path=path, db=db, username=username, password=password)


def _split(rest: str) -> tuple[str, str, str | None]:
    """authority, path, query (``None`` if absent); a fragment is refused."""
    if "#" in rest:
        raise ValueError("the URL has a # fragment (a # in a password must be written %23)")
    rest, question, query = rest.partition("?")
    slash = rest.find("/")
    if slash < 0:
        return rest, "", query if question else None
    return rest[:slash], rest[slash:], query if question else None


def _credentials(userinfo: str) -> tuple[str | None, str]:
    user, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError(
            "the part before @ has no password: write redis://user:password@host, "
            "or redis://:password@host for a password alone"
        )
    if not password:
        raise ValueError("the password before @ is empty")
    try:
        return (unquote(user, errors="strict") or None), unquote(password, errors="strict")
    except UnicodeDecodeError:
        raise ValueError("the user or password is not UTF-8 once its %-escapes are decoded") from None


def _host_and_port(hostport: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("the address in [brackets] is not an IPv6 address") from None
        if not bracket or (after and not after.startswith(":")):
            raise ValueError("an IPv6 address goes in brackets, then an optional :port: redis://[::1]:6379")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_or_empty = hostport.partition(":")
        port_text = port_text_or_empty if colon else None
        if ":" in port_text_or_empty:
            raise ValueError("an IPv6 address goes in brackets: redis://[::1]:6379")
        if not host:
            raise ValueError(f"the URL has no host: expected {URL_FORMS}")
        if not _HOST_NAME.fullmatch(host):
            raise ValueError("the host must be a name or an IP address (letters, digits, '.', '-', '_')")
    if port_text is None:
        return host, DEFAULT_REDIS_PORT
    if not _DIGITS.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError("the port must be a whole number from 1 to 65535")
    return host, int(port_text)


def _db(text: str, rule: str) -> int:
    if not _DIGITS.fullmatch(text) or int(text) > _MAX_DB:
        raise ValueError(rule)
    return int(text)
