"""The UDP tee a user writes first: one Python process, one socket on the
VIP, every datagram sent on to each target (the client's address is lost:
the copies come from this host).

    python3 -m sbulb.bench.tee VIP:PORT TARGET [TARGET ...]
"""

from __future__ import annotations

import signal
import socket
import sys

SO_RCVBUFFORCE = 33  # socket(7): root may exceed net.core.rmem_max


def main(argv: list[str]) -> int:
    listen, targets = argv[0], argv[1:]
    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    front.bind((host, port))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    destinations = [(target, port) for target in targets]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        data = front.recv(65535)
        for destination in destinations:
            out.sendto(data, destination)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
