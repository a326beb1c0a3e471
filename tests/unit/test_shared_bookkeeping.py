"""What API nodes on one store keep in it, written by two nodes at the same moment: each store
object here stands for a node (an engine of its own), and the other node's write is made to land
between this node's check and its insert, the moment a race would hit."""

from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy import event

from app.store.repository import Store


@contextmanager
def lands_first(node: Store, table: str, other_write) -> None:
    """Run `other_write()` (the other node) just before `node` inserts into `table`."""

    fired = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if not fired and statement.lstrip().upper().startswith("INSERT INTO") and f" {table} " in f" {statement} ":
            fired.append(statement)
            other_write()

    event.listen(node.engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(node.engine, "before_cursor_execute", before)
    assert fired, f"{node} never inserted into {table}"


def test_nodes_starting_together_agree_on_the_paging_secret(store_url):
    one, two = Store(store_url), Store(store_url)
    try:
        with lands_first(one, "setting", two.settings.paging_secret):
            first = one.settings.paging_secret()
        assert first == two.settings.paging_secret() == Store(store_url).settings.paging_secret()
    finally:
        one.close()
        two.close()


def test_two_nodes_marking_one_patients_fetch_at_once_both_succeed(store_url):
    one, two = Store(store_url), Store(store_url)
    try:
        with lands_first(one, "patient_fetch", lambda: two.fetches.mark("pacs", "urn:oid:1.2", "77", 1_000)):
            one.fetches.mark("pacs", "urn:oid:1.2", "77", 2_000)
        assert one.fetches.when("pacs", "urn:oid:1.2", "77") == two.fetches.when("pacs", "urn:oid:1.2", "77") == 2_000
        two.fetches.mark("pacs", "urn:oid:1.2", "77", 3_000)
        assert one.fetches.when("pacs", "urn:oid:1.2", "77") == 3_000
    finally:
        one.close()
        two.close()
