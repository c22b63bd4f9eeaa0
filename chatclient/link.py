"""The client's byte stream to the server: a TCP connection, with or without TLS.

Theory of operation
-------------------
The sessions in ``chatclient.cli`` see the server through a ``Link``: they
wait for it with ``select`` (a ``Link`` has a ``fileno``), take what
arrived with ``receive``, send with ``send_all``, half-close with
``end_output`` and abort with ``shut``.  The plain ``Link`` is the socket
itself; ``TlsLink`` puts TLS between, with the same five verbs, so the
sessions do not know which one they have.

*Opening.*  ``connect`` opens the TCP connection; with ``--tls``,
``start_tls`` then runs the handshake before anything else is sent, so a
failed handshake (an untrusted certificate, a host name the certificate
does not name, a server that does not speak TLS) ends the client: there is
no fallback to plaintext, and no chat line ever leaves unencrypted.  The
context comes from ``ssl.create_default_context()``: the server's
certificate and host name are verified, against the system's trusted CAs
or, with ``--cafile``, against that file's instead; TLS 1.2 is the oldest
version it accepts.

*Why a memory BIO, not an SSLSocket.*  The client has two threads on one
connection: one reads while the other sends.  An OpenSSL connection must
not be used by two threads at once, and ``SSLSocket`` has no lock of its
own.  So ``TlsLink`` keeps the TLS state in an ``ssl.SSLObject`` over two
``MemoryBIO`` buffers and moves the encrypted bytes on the plain socket
itself, all under one lock, which also keeps the records in the order TLS
made them.  Two more traps are avoided this way.  Decrypted bytes never
wait inside the TLS object where ``select`` cannot see them: ``receive``
decrypts every complete record it was given before it returns.  And the
half-close at the end of piped input works: ``end_output`` sends TLS's
close_notify, then shuts the socket for writing, and the server's answers
are still read afterwards (``SSLSocket.unwrap`` would instead wait for, and
discard, them).

Imports: the standard library only.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time

__all__ = [
    "CONNECT_TIMEOUT",
    "ConnectError",
    "Link",
    "TlsLink",
    "connect",
    "start_tls",
    "tls_context",
]

CONNECT_TIMEOUT = 10.0  # seconds for the TCP connection, and again for the TLS handshake
RECV_SIZE = 65536


class ConnectError(Exception):
    """The connection could not be opened; the message is the line to print."""


class Link:
    """A connected TCP socket, as the sessions use it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @property
    def security(self) -> str:
        """What protects the connection, for the user ("" for nothing)."""
        return ""

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, seconds: float | None) -> None:
        """Bound every later blocking send (and receive) by ``seconds``."""
        self.sock.settimeout(seconds)

    def receive(self) -> tuple[bytes, bool]:
        """(the bytes that arrived, whether the server's stream has ended).

        Call it when ``select`` says the link is readable; the bytes may be
        empty while the stream goes on (with TLS, half a record came).
        """
        data = self.sock.recv(RECV_SIZE)
        return data, not data

    def send_all(self, data: bytes) -> None:
        self.sock.sendall(data)

    def end_output(self) -> None:
        """Half-close: no more bytes from us; the server's may still come."""
        _shutdown(self.sock, socket.SHUT_WR)

    def shut(self) -> None:
        """End the connection both ways at once, waking a thread blocked on it."""
        _shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


class TlsLink(Link):
    """A TCP socket with TLS over it; see the module docstring for why a memory BIO."""

    def __init__(
        self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        super().__init__(sock)
        self._tls = tls
        self._incoming = incoming
        self._outgoing = outgoing
        self._lock = threading.Lock()  # the TLS object, both buffers and the order of sends
        self._peer_done = False  # the server's close_notify arrived

    @property
    def security(self) -> str:
        return f"TLS ({self._tls.version()})"

    def receive(self) -> tuple[bytes, bool]:
        if self._peer_done:
            return b"", True
        raw = self.sock.recv(RECV_SIZE)  # only the reading thread receives: no lock needed
        with self._lock:
            if not raw:  # TCP ended without close_notify: the end all the same
                return b"", True
            self._incoming.write(raw)
            data = self._decrypt()
            self._flush()  # TLS may answer what it read (a key update)
        return data, self._peer_done

    def _decrypt(self) -> bytes:
        """Every complete record received so far, decrypted, so none waits unseen by select."""
        pieces = []
        while True:
            try:
                piece = self._tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify, after ours
                piece = b""
            if not piece:  # close_notify: CPython returns b"" when ours has not been sent
                self._peer_done = True
                break
            pieces.append(piece)
        return b"".join(pieces)

    def send_all(self, data: bytes) -> None:
        with self._lock:
            self._tls.write(data)
            self._flush()

    def end_output(self) -> None:
        """close_notify, then the TCP half-close; the server's answers are still read after it."""
        try:
            with self._lock:
                try:
                    self._tls.unwrap()  # sends close_notify; the peer's comes later
                except ssl.SSLWantReadError:
                    pass
                self._flush()
        except (ssl.SSLError, OSError):
            pass  # the connection is gone: the reading side says so
        super().end_output()

    def shut(self) -> None:
        """A close_notify if it can go at once: never waiting for the lock, nor for room to send."""
        if self._lock.acquire(blocking=False):
            try:
                try:
                    self._tls.unwrap()
                except ssl.SSLWantReadError:
                    pass  # sent ours; the server's is not awaited
                data = self._outgoing.read()
                if data:
                    self.sock.send(data, getattr(socket, "MSG_DONTWAIT", 0))
            except (ssl.SSLError, OSError):
                pass
            finally:
                self._lock.release()
        super().shut()

    def _flush(self) -> None:
        """Send what TLS has written; called with the lock held."""
        data = self._outgoing.read()
        if data:
            self.sock.sendall(data)


def connect(host: str, port: int) -> Link:
    """A plain link to ``host`` ``port``, or ``ConnectError``."""
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except ConnectionRefusedError:
        raise ConnectError(
            f"cannot connect to {host} port {port}: connection refused (is the server running?)"
        ) from None
    except socket.gaierror as error:
        raise ConnectError(f"cannot resolve host {host!r}: {error.strerror}") from None
    except TimeoutError:
        raise ConnectError(
            f"cannot connect to {host} port {port}: no answer within {CONNECT_TIMEOUT:g} s"
        ) from None
    except OSError as error:
        reason = error.strerror or error
        raise ConnectError(f"cannot connect to {host} port {port}: {reason}") from None
    sock.settimeout(None)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return Link(sock)


def tls_context(cafile: str | None) -> ssl.SSLContext:
    """The context that verifies the server: the system's CAs, or only those in ``cafile``.

    ``ValueError`` with the reason, for a file that cannot be used.
    """
    try:
        return ssl.create_default_context(cafile=cafile)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not a file of PEM certificates") from None
    except PermissionError:
        raise ValueError("permission denied") from None
    except ssl.SSLError:
        raise ValueError("holds no CA certificate in PEM format") from None
    except (OSError, UnicodeError) as error:
        raise ValueError(getattr(error, "strerror", None) or str(error)) from None


def start_tls(link: Link, context: ssl.SSLContext, host: str, port: int) -> TlsLink:
    """The TLS handshake over ``link``, within ``CONNECT_TIMEOUT``, or ``ConnectError``.

    On failure the socket is closed; the caller sends nothing, in plaintext or otherwise.
    """
    where = f"{host} port {port}"
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
        _handshake(link.sock, tls, incoming, outgoing, time.monotonic() + CONNECT_TIMEOUT)
    except ssl.SSLCertVerificationError as error:
        link.close()
        raise ConnectError(
            f"cannot connect to {where} over TLS: the server's certificate is not trusted: "
            f"{_verify_reason(error)}"
        ) from None
    except ssl.SSLError as error:
        link.close()
        raise ConnectError(
            f"cannot connect to {where} over TLS: the handshake failed: {_ssl_reason(error)}"
        ) from None
    except TimeoutError:
        link.close()
        raise ConnectError(
            f"cannot connect to {where} over TLS: no handshake within {CONNECT_TIMEOUT:g} s"
            " (is this the server's TLS port?)"
        ) from None
    except OSError as error:
        link.close()
        reason = error.strerror or error
        raise ConnectError(f"cannot connect to {where} over TLS: {reason}") from None
    link.sock.settimeout(None)
    return TlsLink(link.sock, tls, incoming, outgoing)


def _handshake(
    sock: socket.socket,
    tls: ssl.SSLObject,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
    deadline: float,
) -> None:
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            _send_quietly(sock, outgoing.read())  # the alert that tells the server why
            raise
        sock.sendall(outgoing.read())
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            raise TimeoutError
        sock.settimeout(max(remaining, 0.001))
        data = sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionAbortedError(
                "the server closed the connection during the handshake (is this its TLS port?)"
            )
        incoming.write(data)
    sock.sendall(outgoing.read())


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        if data:
            sock.send(data)
    except OSError:
        pass


def _verify_reason(error: ssl.SSLCertVerificationError) -> str:
    message = (error.verify_message or _ssl_reason(error)).rstrip(".")
    if "Hostname mismatch" in message or "IP address mismatch" in message:
        return f"it does not name the host you asked for ({message})"
    if "self-signed" in message or "local issuer" in message:
        return f"no trusted CA signed it ({message}; --cafile names a private CA)"
    return message


def _ssl_reason(error: ssl.SSLError) -> str:
    reason = getattr(error, "reason", None)
    if reason == "WRONG_VERSION_NUMBER":
        return "the server did not answer in TLS (is this its TLS port?)"
    if reason:
        return str(reason).lower().replace("_", " ")
    return str(error)


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass
