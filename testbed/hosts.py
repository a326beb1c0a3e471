"""Separate hosts on one machine: each in a network namespace of its own, joined to this machine
by a veth pair on a bridge, as API nodes on a LAN would be. Where namespaces cannot be made
(not root, no `ip`), the hosts are processes on loopback ports of this machine instead.

The hosts reach services of this machine (PostgreSQL, the test authorization server, which
listen on loopback only) at `gateway`: the bridge's address, which HAProxy forwards to them
(testbed/haproxy.py `forwards`).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid

from testbed.orthanc import free_port


class LoopbackHosts:
    """Hosts as processes on this machine's loopback address, each on a port of its own."""

    kind = "processes on loopback ports"
    gateway = "127.0.0.1"

    def __init__(self, count: int):
        self.ports = [free_port() for _ in range(count)]

    def address(self, index: int) -> str:
        return "127.0.0.1"

    def port(self, index: int) -> int:
        return self.ports[index]

    def command(self, index: int, argv: list[str]) -> list[str]:
        return argv

    def close(self) -> None:
        pass


class NamespaceHosts:
    """Hosts in network namespaces of their own, on a bridge whose address is `gateway`."""

    kind = "hosts in network namespaces"
    #: the port each node's server listens on, in its own namespace
    PORT = 8080

    def __init__(self, count: int):
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"fbr{tag}"
        self.namespaces = [f"fnode{tag}-{i}" for i in range(count)]
        self.links = [f"fv{tag}{i}" for i in range(count)]
        self.subnet = self._free_subnet()
        self.gateway = f"{self.subnet}.1"
        try:
            self._ip("link", "add", self.bridge, "type", "bridge")
            self._ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            self._ip("link", "set", self.bridge, "up")
            for index, (namespace, link) in enumerate(zip(self.namespaces, self.links, strict=True)):
                self._ip("netns", "add", namespace)
                self._ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
                self._ip("link", "set", link, "master", self.bridge, "up")
                self._ip("-n", namespace, "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
                self._ip("-n", namespace, "link", "set", "eth0", "up")
                self._ip("-n", namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    @staticmethod
    def _free_subnet() -> str:
        """A 10.x.y.0/24 no interface of this machine is on (other runs may hold bridges too)."""
        used = subprocess.run(["ip", "-o", "-4", "addr"], check=True, capture_output=True, text=True).stdout
        while True:
            subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
            if f" {subnet}." not in used:
                return subnet

    def address(self, index: int) -> str:
        return f"{self.subnet}.{11 + index}"

    def port(self, index: int) -> int:
        return self.PORT

    def command(self, index: int, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[index], *argv]

    def cut(self, index: int) -> None:
        """The host drops off the network (its link goes down): nothing it sends arrives."""
        self._ip("link", "set", self.links[index], "down")

    def close(self) -> None:
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        for link in self.links:  # gone with its namespace's end already, unless that was never made
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)


def namespaces_possible() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def hosts(count: int) -> NamespaceHosts | LoopbackHosts:
    """`count` hosts in network namespaces where this machine allows it, else on loopback."""
    if namespaces_possible():
        try:
            return NamespaceHosts(count)
        except (subprocess.CalledProcessError, OSError):
            pass
    return LoopbackHosts(count)
