"""Several API nodes (`imaging-facade serve` under gunicorn) on separate hosts
(testbed/hosts.py), one config file for all, behind HAProxy (testbed/haproxy.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from testbed.haproxy import HAProxy
from testbed.hosts import LoopbackHosts, NamespaceHosts, hosts

ROOT = Path(__file__).resolve().parents[1]


class Node:
    """One API node: `serve` in its own process group, so a kill takes gunicorn's arbiter and
    workers at once, as the death of its host would."""

    def __init__(self, name: str, place: NamespaceHosts | LoopbackHosts, index: int, config: Path, workdir: Path):
        self.name, self.place, self.index, self.config = name, place, index, config
        self.address, self.port = place.address(index), place.port(index)
        self.url = f"http://{self.address}:{self.port}"
        self.workdir = workdir
        #: each node's audit spool is its own, as on a host of its own (the config names it by ${NODE_SPOOL})
        self.spool = workdir / "audit-spool"
        self.log_path = workdir / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self, workers: int = 2) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "a")
        argv = [sys.executable, "-m", "app.cli", "serve", "--config", str(self.config)]
        argv += ["--host", self.address, "--port", str(self.port), "--workers", str(workers)]
        self.proc = subprocess.Popen(
            self.place.command(self.index, argv),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "NODE_SPOOL": str(self.spool)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.time() + 60
        while True:
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                raise RuntimeError(f"node {self.name} did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL to every process of the node: no request in hand is finished or answered."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """`count` nodes behind HAProxy. `config(gateway, balancer_url)` returns the text of the one
    config file every node reads; `forwards` are ports of this machine's loopback services the
    nodes must reach at the gateway."""

    def __init__(self, workdir: Path, count: int, config, forwards: tuple[int, ...] = ()):
        self.workdir = workdir
        self.place = hosts(count)
        self.balancer: HAProxy | None = None
        self.nodes: list[Node] = []
        try:
            servers = [(f"node{i + 1}", self.place.address(i), self.place.port(i)) for i in range(count)]
            tunnels = [(self.place.gateway, port, port) for port in forwards] if self.namespaced else []
            self.balancer = HAProxy(workdir, servers, tunnels)
            self.config = workdir / "config.yaml"
            self.config.write_text(config(self.place.gateway, f"{self.balancer.url}/fhir"))
            self.nodes = [
                Node(name, self.place, i, self.config, workdir / name) for i, (name, _, _) in enumerate(servers)
            ]
            for node in self.nodes:
                node.start()
            self.wait_all_up()
        except BaseException:
            self.close()
            raise

    @property
    def namespaced(self) -> bool:
        return isinstance(self.place, NamespaceHosts)

    @property
    def url(self) -> str:
        assert self.balancer is not None
        return f"{self.balancer.url}/fhir"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def wait_all_up(self, timeout: float = 30) -> None:
        """Until HAProxy sends requests to every live node (its checks have seen them up)."""
        from testbed.haproxy import SERVED_BY

        live = {n.name for n in self.nodes if n.proc is not None and n.proc.poll() is None}
        seen: set[str] = set()
        deadline = time.time() + timeout
        while seen != live:
            if time.time() > deadline:
                raise RuntimeError(f"HAProxy sends to {sorted(seen)} only, not to every node of {sorted(live)}")
            seen |= {requests.get(f"{self.url}/metadata", timeout=10).headers.get(SERVED_BY, "")} & live
            time.sleep(0.05)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.balancer is not None:
            self.balancer.stop()
        self.place.close()
