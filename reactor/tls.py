"""TLS in the same loop: the context, and a connection that speaks through ``ssl``.

Theory of operation
-------------------
A TLS client is a ``TLSConnection``: the same connection, lifecycle and
queues as a plaintext one (``reactor.connection``), with an ``SSLSocket``
in place of the socket and one phase in front, HANDSHAKING.  The loop
never blocks on TLS, and three of ``ssl``'s rules shape the class:

- *The handshake is driven by readiness.*  ``do_handshake`` raises
  ``SSLWantReadError`` or ``SSLWantWriteError`` until it is done; the
  connection registers for whichever the handshake waits for, and the loop
  calls it again when the selector says so.  A ``CloseTimer`` bounds it
  (``HANDSHAKE_TIMEOUT``): a client that stalls is closed at its deadline.
  Only a finished handshake makes a chat connection: the protocol machine
  hears ``ConnectionOpened`` then, so a stalled handshake never takes a
  place under ``--max-clients``.
- *A write that wants to wait is retried with the same bytes.*  OpenSSL
  writes a buffer whole or not at all (no partial writes), and after
  ``SSLWantWriteError`` the next write must pass the same bytes.  So the
  queue is joined into one piece before a send, and a piece that could not
  be written stays first, alone, until it is (``_retry``).  ``sendmsg`` does
  not exist for TLS; nothing needs it.
- *Decrypted bytes can wait inside the SSL object.*  One TLS record may
  hold more than one ``recv`` returns; those bytes are no longer in the
  kernel, so the selector will never report them.  ``has_buffered_input``
  tells the loop to read again before it sleeps.

Closing sends close_notify where the socket can take it, never waiting for
the peer's; a lingering close then shuts TCP for writing as usual.

The context is made here too (``server_context``): from
``ssl.create_default_context(Purpose.CLIENT_AUTH)``, TLS 1.2 and newer,
renegotiation off.  Bad or unreadable files raise ``TLSSetupError`` with a
message that names the file, so the daemon can stop with exit status 2.
"""

from __future__ import annotations

import os
import selectors
import ssl

from .connection import CLOSED, HANDSHAKING, OPEN, Connection, PeerGone

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to finish its TLS handshake."""

WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
"""``ssl``'s "not now": the loop treats them like EAGAIN."""


class TLSSetupError(Exception):
    """The certificate or key cannot be used; the message names the file and why."""


def server_context(cert_file: str, key_file: str | None = None) -> ssl.SSLContext:
    """A server context for ``cert_file`` (and ``key_file``; the key may be in the cert file)."""
    for label, path in (("certificate", cert_file), ("key", key_file)):
        if path is not None and not os.access(path, os.R_OK):
            reason = "no such file" if not os.path.exists(path) else "not readable"
            raise TLSSetupError(f"TLS {label} file {path}: {reason}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        files = cert_file if key_file is None else f"{cert_file} and {key_file}"
        raise TLSSetupError(
            f"TLS certificate or key in {files}: {error.reason or error} "
            "(a PEM certificate chain and its matching private key are needed)"
        ) from None
    except OSError as error:
        path = error.filename or cert_file
        raise TLSSetupError(f"TLS certificate or key file {path}: {error.strerror}") from None
    return context


class TLSConnection(Connection):
    """A client connection over TLS; see the module docstring for what differs."""

    __slots__ = ("_retry", "_wants", "_buffered")

    tls = True

    def __init__(self, sock: ssl.SSLSocket, *args: object, buffered: list[Connection]) -> None:
        super().__init__(sock, *args)  # type: ignore[arg-type]
        self.phase = HANDSHAKING
        self._retry = False  # queue[0] failed to go out and must be written again as it is
        self._wants = selectors.EVENT_READ  # what the handshake waits for
        self._buffered = buffered  # the loop's list of connections to read before it sleeps

    # -- the handshake ------------------------------------------------------------

    def handshake(self) -> bool:
        """Take the handshake as far as it goes now; True once it is done.

        Raises ``PeerGone`` when it fails: plaintext to the TLS port, an
        old protocol version, garbage, a reset.
        """
        try:
            self.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._wants = selectors.EVENT_READ
            return False
        except ssl.SSLWantWriteError:
            self._wants = selectors.EVENT_WRITE
            return False
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise PeerGone(getattr(error, "reason", None) or error) from None
        self.phase = OPEN
        return True

    def update_interest(self, max_output: int) -> None:
        if self.phase is HANDSHAKING:
            self._set_mask(self._wants)
            return
        super().update_interest(max_output)
        if self.mask & selectors.EVENT_READ and self.has_buffered_input:
            self._buffered.append(self)  # the selector would never say: read it anyway

    @property
    def has_buffered_input(self) -> bool:
        """Whether decrypted bytes wait inside the SSL object, unseen by the selector."""
        return self.phase is not CLOSED and bool(self.sock.pending())  # type: ignore[attr-defined]

    # -- output -------------------------------------------------------------------

    def keep_unsent(self, data: bytes, sent: int, reply_bytes: int) -> None:
        super().keep_unsent(data, sent, reply_bytes)
        self._retry = True  # TLS never writes part of a buffer: none of it went

    def send_queued(self) -> None:
        queue = self.queue
        assert isinstance(queue, list), "send_queued needs something queued"
        if not self._retry and len(queue) > 1:
            queue[:] = [b"".join(queue)]
        try:
            sent = self.sock.send(queue[0])
        except WOULD_BLOCK:
            self._retry = True
            return
        except (BlockingIOError, InterruptedError):
            self._retry = True
            return
        except OSError as error:
            raise PeerGone(error) from None
        self._retry = False
        self._consume(sent)

    # -- closing ------------------------------------------------------------------

    def linger(self) -> bool:
        self._send_close_notify()
        return super().linger()  # SSLSocket.shutdown: plain TCP from here on

    def close(self) -> None:
        if self.phase is not HANDSHAKING and self.phase is not CLOSED:
            self._send_close_notify()
        super().close()

    def _send_close_notify(self) -> None:
        """Tell the peer we are done, if its socket can take it now; never wait for its answer."""
        try:
            self.sock.unwrap()  # type: ignore[attr-defined]
        except (OSError, ValueError):
            pass  # it wants the peer's close_notify, or the socket is gone: either way, done
