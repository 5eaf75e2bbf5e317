"""The UDP forwarder a user writes first: one Python process, one socket on
the VIP, each new client given the next real server in turn and a socket of
its own towards it, so that replies find their way back.

    python3 -m sbulb.bench.forwarder VIP:PORT SERVER [SERVER ...]
"""

from __future__ import annotations

import itertools
import resource
import selectors
import signal
import socket
import sys


def main(argv: list[str]) -> int:
    listen, servers = argv[0], argv[1:]
    # a socket per client: as many as the system lets us
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind((host, port))
    turn = itertools.cycle(servers)
    upstream: dict[tuple[str, int], socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(front, selectors.EVENT_READ, None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            data, source = sock.recvfrom(65535)
            if key.data is None:  # a client's datagram
                out = upstream.get(source)
                if out is None:
                    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    out.connect((next(turn), port))
                    upstream[source] = out
                    selector.register(out, selectors.EVENT_READ, source)
                out.send(data)
            else:  # a server's reply, to its client
                front.sendto(data, key.data)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
