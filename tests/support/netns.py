"""A second host on this machine: a Linux network namespace joined to this one by a veth pair
(iproute2, root only). Its programs reach this host at `outer`, which listens there too; its
link can be cut and restored, as a host's network fails.

    with Host("10.213.5") as host:
        subprocess.Popen(host.run(["imaging-facade", "sync", "--watch", ...]))
        host.cut()
"""

from __future__ import annotations

import subprocess
import uuid


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


class Host:
    def __init__(self, subnet: str):
        """`subnet`: the first three octets of a /24 no interface of this machine uses."""
        tag = uuid.uuid4().hex[:6]
        self.name = f"fhw-{tag}"
        self.outer_link, self.inner_link = f"vo-{tag}", f"vi-{tag}"
        self.outer, self.inner = f"{subnet}.1", f"{subnet}.2"

    def __enter__(self) -> Host:
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.outer_link, "type", "veth", "peer", "name", self.inner_link)
            _ip("link", "set", self.inner_link, "netns", self.name)
            _ip("addr", "add", f"{self.outer}/24", "dev", self.outer_link)
            _ip("link", "set", self.outer_link, "up")
            _ip("-n", self.name, "addr", "add", f"{self.inner}/24", "dev", self.inner_link)
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "link", "set", self.inner_link, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "link", "del", self.outer_link], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    def run(self, argv: list[str]) -> list[str]:
        """`argv` to run inside the namespace (`ip netns exec` execs it: same process id)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """The host's link goes down: its packets, and those sent to it, are lost."""
        _ip("-n", self.name, "link", "set", self.inner_link, "down")

    def restore(self) -> None:
        _ip("-n", self.name, "link", "set", self.inner_link, "up")
