"""The seed's design as a benchmark peer: a thread per client, blocked in recv.

Not the product and not a test.  The server this project replaced gave
every client a thread and shared one dictionary of users under a lock; this
is that design in a page, speaking enough of the protocol for the
benchmark (LOGIN, MSG, DM, WHO, PING, QUIT), so the event loop can be
measured against it on the same machine: a blocking ``recv`` answers a PING
without a ``select`` first, and a thread per client costs a stack each.

    python tests/benchmarks/seed_threads.py [PORT]     # prints "Chat server started on port N"
"""

import socket
import sys
import threading

users: dict = {}  # name -> socket, in login order
lock = threading.Lock()


def serve(sock: socket.socket) -> None:
    name, buffer = None, b""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                word, _, rest = raw.strip().partition(b" ")
                word = word.upper()
                if word == b"LOGIN":
                    with lock:
                        taken = rest in users
                        if not taken:
                            name, users[rest] = rest, sock
                    sock.sendall(b"ERR username-taken\n" if taken else b"OK\n")
                elif word == b"PING":
                    sock.sendall(b"PONG\n")
                elif word == b"WHO":
                    with lock:
                        sock.sendall(b"".join(b"USER " + user + b"\n" for user in users))
                elif word == b"MSG" and name:
                    with lock:  # a slow reader stalls the sender here, and everyone behind it
                        for other, peer in users.items():
                            if other != name:
                                peer.sendall(b"MSG " + name + b" " + rest + b"\n")
                elif word == b"DM" and name:
                    target, _, text = rest.partition(b" ")
                    with lock:
                        peer = users.get(target)
                        if peer:
                            peer.sendall(b"DM " + name + b" " + text + b"\n")
                elif word in (b"QUIT", b"EXIT"):
                    sock.sendall(b"Goodbye!\n")
                    break
            else:
                continue
            break
    with lock:
        if name is not None and users.get(name) is sock:
            del users[name]
            for peer in users.values():
                peer.sendall(b"INFO " + name + b" disconnected\n")


def main() -> None:
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), backlog=4096)
    print(f"Chat server started on port {listener.getsockname()[1]}", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
