"""The handshake floor: OpenSSL's server side of one TLS handshake, alone.

Not a test (pytest does not collect it); run it from the repository root:

    python tests/benchmarks/handshake_floor.py [--count N] [--key-type ecdsa|rsa]

Both ends of each handshake live in this one process and talk over memory
BIOs: no socket, no event loop, no server.  Only the server end's
``do_handshake`` calls are timed, with the context our server makes
(``reactor.tls.server_context``) and a certificate ``trustme`` makes for the
run.  The result is the part of ``handshakes-tls``'s "server CPU ms per
handshake" that is OpenSSL's own work (key share, signature, key schedule,
session tickets), which Redis, using the same library, pays too; what our
server spends above it is Python and system calls.  Standard library,
``trustme`` and ``reactor`` only.
"""

from __future__ import annotations

import argparse
import pathlib
import ssl
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from reactor.tls import server_context  # noqa: E402

perf_ns = time.perf_counter_ns


def contexts(key_type: str) -> tuple:
    """Our server's context and a client context that trusts it, for a fresh certificate."""
    import trustme

    kind = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
    ca = trustme.CA(key_type=kind)
    leaf = ca.issue_cert("127.0.0.1", key_type=kind)
    with leaf.cert_chain_pems[0].tempfile() as cert, leaf.private_key_pem.tempfile() as key:
        server = server_context(cert, key)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def one_handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> int:
    """Nanoseconds the server end spent in ``do_handshake`` for one full handshake."""
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(server_in, server_out, server_side=True)
    c = client.wrap_bio(client_in, client_out, server_hostname="127.0.0.1")
    spent = 0
    server_done = client_done = False
    for _ in range(10):  # a TLS 1.3 handshake takes two client flights
        if not client_done:
            try:
                c.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        if not server_done:
            t = perf_ns()
            try:
                s.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            spent += perf_ns() - t
        client_in.write(server_out.read())
        if server_done and client_done:
            return spent
    raise RuntimeError("the handshake did not finish in 10 rounds")


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenSSL's server side of a TLS handshake, alone.")
    parser.add_argument("--count", type=int, default=1000, help="timed handshakes (default 1000)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa")
    args = parser.parse_args(argv)
    try:
        server, client = contexts(args.key_type)
    except ImportError:
        print("handshake_floor.py needs trustme (pip install trustme; it is in the test extra)",
              file=sys.stderr)
        return 2
    for _ in range(args.warmup):
        one_handshake(server, client)
    times = sorted(one_handshake(server, client) for _ in range(args.count))
    p50 = times[len(times) // 2] / 1e3
    mean = sum(times) / len(times) / 1e3
    key = "RSA 2048" if args.key_type == "rsa" else "ECDSA P-256"
    print(f"handshake floor (OpenSSL's server side alone, memory BIOs, {key}, {ssl.OPENSSL_VERSION}): "
          f"p50 {p50:.0f} us, mean {mean:.0f} us per handshake ({args.count} handshakes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
