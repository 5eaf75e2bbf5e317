"""`make demo`: how to run sbulb on an interface of this machine."""

from __future__ import annotations

import sys

HOWTO = """\
sbulb runs on a network interface, as root:

  /usr/bin/python3 -m sbulb IFNET -vs VIRTUAL_IP -rs REAL_SERVER [...] -p PORT [...]

for example, with the real servers in a watched file:

  /usr/bin/python3 -m sbulb eth0 -vs 10.188.7.99 -cfg packaging/systemd/sbulb.conf -p 5683 -l INFO

`--check` compiles and verifies the XDP program without attaching it:
"""


def main() -> int:
    print(HOWTO)
    from sbulb.cli import main as sbulb_main

    args = ["lo", "-vs", "10.188.7.99", "-rs", "10.188.100.163", "10.188.100.230",
            "-p", "5683", "--check"]
    print("  $ python3 -m sbulb " + " ".join(args))
    return sbulb_main(args)


if __name__ == "__main__":
    sys.exit(main())
