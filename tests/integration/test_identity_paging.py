"""The review queue at scale, on SQLite and PostgreSQL: the admin API and `identity list` page
through every pair with a cursor, say how many there are, and never stop silently.

2,500 pairs (more than two pages of 1,000) are written by the store's own link code, with many
equal scores so that the order inside a tie (the pair's ids) is what keeps pages apart."""

from __future__ import annotations

import base64
import random
import re

import orjson
import pytest
from click.testing import CliRunner

from app.cli import main as cli
from app.store import links
from app.store.repository import Store
from app.web import create_app

PAIRS = 2500
PAGE = 1000


def fill(store_url, write_config, count: int):
    config = write_config(
        {"store": store_url, "server": {"base_url": "http://testserver/fhir"}, "security": {"open": True}}
    )
    store = Store.from_config(config)
    rng = random.Random(18)
    made: dict[tuple[str, str], tuple[str, float]] = {}
    with store.engine.begin() as conn:
        while len(made) < count:
            x, y = f"p{rng.randrange(400):04d}", f"p{rng.randrange(400):04d}"
            if x == y or links.pair(x, y) in made:
                continue
            status = rng.choice(["review", "review", "linked", "manual-unlink"])
            points = float(rng.choice([9, 11.5, 14, 14, 14, 21]))  # ties on purpose
            links.put_link(conn, x, y, status, points, {"points": points, "contributions": []})
            made[links.pair(x, y)] = (status, points)
    return store, config, made


@pytest.fixture
def queue(store_url, write_config):
    store, config, made = fill(store_url, write_config, PAIRS)
    yield create_app(config, store).test_client(), config, made
    store.close()


@pytest.fixture
def small(store_url, write_config):
    store, config, made = fill(store_url, write_config, 5)
    yield create_app(config, store).test_client()
    store.close()


def walk_api(client, query: str) -> tuple[list[dict], list[int]]:
    """Every page from the first, following `next`; the pairs and each page's `total`."""
    url, pairs, totals = f"/admin/identity/links?{query}", [], []
    while url:
        answer = client.get(url)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        page = answer.get_json()
        assert page["count"] == len(page["pairs"]) <= PAGE
        pairs += page["pairs"]
        totals.append(page["total"])
        url = page.get("next")
        assert (url is None) == ("cursor" not in page)
    return pairs, totals


def best_first(pairs: list[dict]) -> bool:
    keys = [(p["points"], *p["patients"]) for p in pairs]
    return keys == sorted(keys, reverse=True)


def test_every_pair_once_over_the_admin_api_and_the_cli(queue):
    client, config, made = queue
    for status in ("all", "review"):
        every_page_once(client, made, status)
    every_page_of_a_patient(client, made)
    cli_pages(config, made)
    a_pair_decided_between_pages_moves_no_other(client, config, made)


def every_page_once(client, made, status):
    expected = {pair for pair, (s, _) in made.items() if status in ("all", s)}
    assert len(expected) > 2 * PAGE or status == "review"
    pairs, totals = walk_api(client, f"status={status}&limit={PAGE}")
    seen = [tuple(p["patients"]) for p in pairs]
    assert len(seen) == len(set(seen)) == len(expected)  # each pair exactly once
    assert set(seen) == expected
    assert set(totals) == {len(expected)}
    assert len(totals) == -(-len(expected) // PAGE)  # no page more than needed
    assert best_first(pairs)
    assert all(made[tuple(p["patients"])] == (p["status"], p["points"]) for p in pairs)


def every_page_of_a_patient(client, made):
    patient = next(iter(made))[0]
    expected = {pair for pair in made if patient in pair}
    pairs, totals = walk_api(client, f"status=all&patient=Patient/{patient}&limit=7")
    assert {tuple(p["patients"]) for p in pairs} == expected and len(pairs) == len(expected)
    assert set(totals) == {len(expected)} and len(totals) == -(-len(expected) // 7)


def a_pair_decided_between_pages_moves_no_other(client, config, made):
    first = client.get(f"/admin/identity/links?status=all&limit={PAGE}").get_json()
    app_store = Store.from_config(config)
    try:
        with app_store.engine.begin() as conn:  # a sync links a new pair ahead of the cursor
            links.put_link(conn, "p9000", "p9001", "linked", 30.0, {"points": 30.0, "contributions": []})
    finally:
        app_store.close()
    rest, totals = walk_api(client, first["next"].split("?", 1)[1])
    seen = [tuple(p["patients"]) for p in first["pairs"] + rest]
    assert len(seen) == len(set(seen)) == PAIRS and set(seen) == set(made)
    assert set(totals) == {PAIRS + 1}  # the count says the new pair is there


def _token(body: dict) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")


@pytest.mark.parametrize(
    "query, text",
    [
        ("cursor=not-a-cursor", "'cursor'"),
        ("cursor=%C3%A9", "'cursor'"),
        ("cursor=" + _token({"v": 1, "s": "", "p": "", "k": [1, "p1", "bad id!"]}), "'cursor'"),
        ("cursor=" + _token({"v": 1, "s": "", "p": "", "k": [True, "p1", "p2"]}), "'cursor'"),
        ("cursor=" + _token({"v": 2, "s": "", "p": "", "k": [1, "p1", "p2"]}), "'cursor'"),
        ("cursor=" + _token([1, "p1", "p2"]), "'cursor'"),
        ("limit=10001", "'limit'"),
        ("limit=-1", "'limit'"),
    ],
)
def test_a_bad_cursor_or_limit_is_400(small, query, text):
    client = small
    answer = client.get(f"/admin/identity/links?status=all&{query}")
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert text in answer.get_json()["error"]


def test_a_cursor_of_another_listing_is_400(small):
    client = small
    cursor = client.get("/admin/identity/links?status=all&limit=2").get_json()["cursor"]
    for query in ("status=review", "status=all&patient=p0001"):
        answer = client.get(f"/admin/identity/links?{query}&cursor={cursor}")
        assert answer.status_code == 400 and "another status or patient" in answer.get_json()["error"]
    assert client.get(f"/admin/identity/links?status=all&cursor={cursor}").status_code == 200


def cli_pages(config, made):
    runner = CliRunner()
    args = ["identity", "list", "--config", str(config.path), "--status", "all", "--limit", str(PAGE)]
    seen: list[tuple[str, str]] = []
    cursor: list[str] = []
    for _ in range(10):
        result = runner.invoke(cli, args + cursor)
        assert result.exit_code == 0, result.output
        rows = [line.split("\t") for line in result.stdout.splitlines()[1:]]
        seen += [(a, b) for a, b, _, _ in rows]
        assert f"{len(rows)} pairs printed, {PAIRS} in all (all)" in result.stderr
        following = re.search(r"next page: (imaging-facade identity list .*)", result.stderr)
        if following is None:
            break
        cursor = ["--cursor", following.group(1).split("--cursor ")[1]]
    assert len(seen) == len(set(seen)) == PAIRS and set(seen) == set(made)

    every = runner.invoke(cli, ["identity", "list", "--config", str(config.path), "--status", "all", "--all"])
    assert every.exit_code == 0 and len(every.stdout.splitlines()) == PAIRS + 1
    assert f"{PAIRS} pairs printed, {PAIRS} in all (all)" in every.stderr and "next page" not in every.stderr

    bad = runner.invoke(cli, args + ["--cursor", "nonsense"])
    assert bad.exit_code == 2 and "'cursor'" in bad.output
