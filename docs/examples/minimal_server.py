"""The chat server in one page: a selectors loop around the real protocol machine.

Run it from the repository root: python3 docs/examples/minimal_server.py [PORT]
It speaks the whole protocol (the machine does), but has none of the
production loop's defences: no budgets, no outbox, no timers, no lingering
close.  docs/event-loop.md compares it with reactor/loop.py, line for line.
"""

import selectors
import socket
import sys

sys.path.insert(0, ".")  # run from the repository root: the protocol package is there
from protocol import (  # noqa: E402
    Broadcast,
    ChatMachine,
    Close,
    ConnectionClosed,
    ConnectionOpened,
    LineFramer,
)

selector = selectors.DefaultSelector()
machine = ChatMachine()
framers, outputs, closing = {}, {}, set()  # per connection: its framer, its unsent bytes


def apply(effects):
    """Carry out the machine's effects: bytes wait in ``outputs``, closes in ``closing``."""
    for effect in effects:
        if isinstance(effect, Close):
            closing.add(effect.conn)
        elif isinstance(effect, Broadcast):
            for conn in effect.recipients():
                outputs[conn] += effect.data
        else:  # Reply or Deliver: one connection
            outputs[effect.conn] += effect.data


def accept(listener):
    sock, address = listener.accept()
    sock.setblocking(False)
    framers[sock], outputs[sock] = LineFramer(sock), bytearray()
    selector.register(sock, selectors.EVENT_READ, receive)
    apply(machine.handle(ConnectionOpened(sock)))


def receive(sock):
    try:
        data = sock.recv(65536)
    except OSError:  # a reset: the peer is gone
        data = b""
    if not data:
        return close(sock)
    framers[sock].feed(data)
    for event in framers[sock].take(max_tokens=10**9, max_work=10**9).events:
        if sock not in closing:  # nothing a closing connection sent may run
            apply(machine.handle(event))


def close(sock):
    selector.unregister(sock)
    del framers[sock], outputs[sock]
    closing.discard(sock)
    sock.close()
    apply(machine.handle(ConnectionClosed(sock)))


def flush():
    """Send what each connection has waiting; close the closing ones once it is all out."""
    for sock in [s for s in outputs if outputs[s] or s in closing]:
        try:
            del outputs[sock][: sock.send(outputs[sock])]
        except BlockingIOError:
            continue  # its kernel buffer is full: try again next turn
        except OSError:
            outputs[sock].clear()
            closing.add(sock)
        if sock in closing and not outputs[sock]:
            close(sock)


def serve(port=4000):
    listener = socket.create_server(("127.0.0.1", port))
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, accept)
    print(f"Chat server started on port {listener.getsockname()[1]}", flush=True)
    while True:
        waiting = any(outputs.values()) or closing  # then poll, never sleep
        for key, _ in selector.select(0 if waiting else None):
            key.data(key.fileobj)
        flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 4000)
