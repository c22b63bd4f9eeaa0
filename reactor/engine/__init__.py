"""The engine connection for cluster mode: talking to Redis from inside the event loop.

Theory of operation
-------------------
Cluster mode (``docs/cluster.md``) keeps
the cluster's one order of events in Redis.  This package is only the
connection to it, with no cluster logic: what to append, when to read and
what the lease means belong to the cluster node that owns the links.  Three
modules, one job each:

- ``address``: ``--cluster URL`` -> ``RedisAddress``, a password that is
  never shown; standard library only, so ``reactor.config`` can use it;
- ``resp``: commands encoded by hand, replies parsed by ``hiredis``
  (imported only when a link starts), and the error values callbacks get;
- ``link``: ``RedisLink``, one non-blocking, pipelined, reconnecting
  connection in the reactor's selector.

A node uses two links: one for its writes and short commands, pipelined,
and one that sits in ``XREAD BLOCK`` (a blocked connection answers nothing
else until the block ends).

Importing this package imports neither hiredis nor anything outside the
standard library, so the standalone server can name these types for free.
"""

from __future__ import annotations

from .address import URL_FORMS, RedisAddress, parse_redis_url
from .link import Backoff, LinkState, RedisLink
from .resp import (
    INSTALL_HINT,
    EngineError,
    LinkLost,
    MissingExtra,
    ReplyError,
    encode_command,
    encode_xadd,
    hiredis_available,
    load_hiredis,
)

__all__ = [
    "INSTALL_HINT",
    "URL_FORMS",
    "Backoff",
    "EngineError",
    "LinkLost",
    "LinkState",
    "MissingExtra",
    "RedisAddress",
    "RedisLink",
    "ReplyError",
    "encode_command",
    "encode_xadd",
    "hiredis_available",
    "load_hiredis",
    "parse_redis_url",
]
