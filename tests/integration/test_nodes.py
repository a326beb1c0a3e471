"""Three API nodes on one PostgreSQL store behind HAProxy (docs/haproxy.cfg), each node a host of
its own (a network namespace) where this machine allows it: paging links made by one node are
followed on another, and a node killed under load costs the clients no request.

The nodes check tokens (the test authorization server's), so the paging link's binding to its
token holds across nodes too; each keeps its own audit spool, as on a host of its own.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from app.config import load_config
from app.store import tables as t
from app.store.repository import Store
from app.sync import sync_source
from testbed.haproxy import SERVED_BY
from testbed.nodes import Cluster
from tests.support.smart_auth import AUDIENCE, AuthServer, bearer
from tests.support.stores import postgres_database

pytestmark = [pytest.mark.server, pytest.mark.postgres, pytest.mark.auth_server]

ROOT = Path(__file__).resolve().parents[2]
NODES = 3
#: studies the sample archive's sync stores (scripts/make_sample_archive.py: pydicom's files)
SAMPLE_STUDIES = 31


def node_config(database: str, auth_port: int, archive) -> object:
    """The one config file of every node: the store and the key server at the gateway the nodes
    reach this machine by, links to the balancer, the audit spool from the node's environment."""

    def text(gateway: str, balancer_url: str) -> str:
        return yaml.safe_dump(
            {
                "store": database.replace("@127.0.0.1:", f"@{gateway}:"),
                "server": {"base_url": balancer_url, "workers": 2, "trusted_proxies": 1},
                "security": {
                    "open": False,
                    "issuer": f"http://127.0.0.1:{auth_port}",
                    "audience": AUDIENCE,
                    "jwks_uri": f"http://{gateway}:{auth_port}/jwks",
                    "token_endpoint": f"http://127.0.0.1:{auth_port}/token",
                    "audit_spool": "${NODE_SPOOL}",
                },
                "sources": [{"name": "sample", "type": "folder", "path": str(archive), "timezone": "UTC"}],
            },
            sort_keys=False,
        )

    return text


@pytest.fixture(scope="module")
def database():
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def auth(tmp_path_factory):
    server = AuthServer(tmp_path_factory.mktemp("auth"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, database, auth):
    work = tmp_path_factory.mktemp("nodes", numbered=True)
    archive = work / "archive"
    subprocess.run([sys.executable, "scripts/make_sample_archive.py", str(archive)], cwd=ROOT, check=True)
    config_text = node_config(database, auth.port, archive)
    (work / "sync.yaml").write_text(config_text("127.0.0.1", "http://127.0.0.1/fhir"))
    config = load_config(work / "sync.yaml", environ={"NODE_SPOOL": str(work / "sync-spool")})
    store = Store.from_config(config)
    sync_source(store, config.sources[0])
    store.close()
    cluster = Cluster(work, NODES, config_text, forwards=(make_url(database).port or 5432, auth.port))
    yield cluster
    cluster.close()
    shutil.rmtree(archive, ignore_errors=True)


@pytest.fixture
def token(auth):
    return auth.sign({"scope": "system/*.rs"})


def match_ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def next_url(bundle: dict) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def test_the_nodes_are_separate_hosts_where_possible(cluster):
    """Says which kind of nodes this run had; on a machine that allows network namespaces they are hosts."""
    from testbed.hosts import namespaces_possible

    assert cluster.namespaced == namespaces_possible(), cluster.place.kind
    assert len({(n.address, n.port) for n in cluster.nodes}) == NODES


def test_a_paging_link_made_by_one_node_is_followed_on_another(cluster, token, auth):
    session = requests.Session()
    everything = session.get(f"{cluster.url}/ImagingStudy?_count=100", headers=bearer(token), timeout=30).json()
    assert len(match_ids(everything)) == SAMPLE_STUDIES
    url: str | None = f"{cluster.url}/ImagingStudy?_count=2"
    served, ids = [], []
    while url:
        answer = session.get(url, headers=bearer(token), timeout=30)
        assert answer.status_code == 200, answer.text
        served.append(answer.headers[SERVED_BY])
        ids += match_ids(answer.json())
        url = next_url(answer.json())
    assert sorted(ids) == sorted(match_ids(everything)) and len(ids) == len(set(ids))
    assert set(served) == {n.name for n in cluster.nodes}
    # round robin: most pages come from another node than the page whose link led to them
    assert sum(a != b for a, b in zip(served, served[1:], strict=False)) >= (len(served) - 1) // 2

    # node by node: a link node1 made, followed on node2 and node3 directly, gives the same page
    one, two, three = cluster.nodes
    first = session.get(f"{one.url}/fhir/ImagingStudy?_count=2", headers=bearer(token), timeout=30).json()
    link = next_url(first)
    assert link is not None and link.startswith(cluster.url)  # links name the balancer, not the node
    pages = [
        session.get(link.replace(cluster.url, f"{node.url}/fhir"), headers=bearer(token), timeout=30)
        for node in (one, two, three)
    ]
    assert [p.status_code for p in pages] == [200, 200, 200]
    assert match_ids(pages[1].json()) == match_ids(pages[0].json()) == match_ids(pages[2].json())
    # and another token's link stays foreign on every node
    other = auth.sign({"scope": "system/*.rs", "sub": "another-client", "client_id": "another-client"})
    for node in (two, three):
        refused = session.get(link.replace(cluster.url, f"{node.url}/fhir"), headers=bearer(other), timeout=30)
        assert refused.status_code == 400 and "_page" in refused.text


def audit_events(database: str) -> int:
    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(t.AuditEventRow)).scalar_one()
    finally:
        engine.dispose()


def test_killing_a_node_under_load_costs_no_client_a_request(cluster, token, database):
    session = requests.Session()
    patients = match_ids(session.get(f"{cluster.url}/Patient?_count=100", headers=bearer(token), timeout=30).json())
    assert len(patients) >= 10
    expected = {
        pid: sorted(
            match_ids(
                session.get(f"{cluster.url}/ImagingStudy?patient={pid}", headers=bearer(token), timeout=30).json()
            )
        )
        for pid in patients
    }
    assert sum(len(v) for v in expected.values()) == SAMPLE_STUDIES
    victim = cluster.node("node2")
    time.sleep(1.5)  # the audit events so far are stored (the nodes drain every half second)
    audit_before = audit_events(database)
    before = cluster.balancer.stats()

    stop = threading.Event()
    lock = threading.Lock()
    served: list[tuple[float, str]] = []
    failures: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as mine:
            while not stop.is_set():
                pid = rng.choice(patients)
                try:
                    answer = mine.get(
                        f"{cluster.url}/ImagingStudy?patient={pid}&_count=100", headers=bearer(token), timeout=70
                    )
                except requests.RequestException as exc:
                    with lock:
                        failures.append(type(exc).__name__)
                    continue
                with lock:
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")
                    elif sorted(match_ids(answer.json())) != expected[pid]:
                        failures.append("a wrong answer")
                    else:
                        served.append((time.monotonic(), answer.headers[SERVED_BY]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        victim.kill()
        killed_at = time.monotonic()
        time.sleep(6)
        restarted_at = time.monotonic()
        victim.start()  # the host comes back: HAProxy's checks take it in again
        cluster.wait_all_up()
        back_at = time.monotonic()
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    after = cluster.balancer.stats()

    assert failures == []
    assert len(served) > 100
    by_node = Counter(name for _, name in served)
    assert set(by_node) == {n.name for n in cluster.nodes}
    assert any(name == victim.name for when, name in served if when < killed_at)
    # answers in flight as it died, whose bytes were on their way, reach the clients within moments
    assert {name for when, name in served if killed_at + 0.5 < when < restarted_at} == {"node1", "node3"}
    assert any(name == victim.name for when, name in served if when > back_at)
    # the balancer did retry: requests the dead node could not take went to another
    retried = sum(int(after[("nodes", s)]["wredis"] or 0) - int(before[("nodes", s)]["wredis"] or 0) for s in by_node)
    assert retried >= 1

    # no audit event lost: the killed node's spooled events are stored once it is back
    deadline = time.time() + 30
    while audit_events(database) - audit_before < len(served) and time.time() < deadline:
        time.sleep(0.5)
    assert audit_events(database) - audit_before >= len(served)
