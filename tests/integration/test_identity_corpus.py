"""Identity across real archives: the same people in three Orthancs under other IDs and issuers,
with typos, swapped names, missing or garbled birth dates, twins and namesakes; a real sync
of each; the automatic links compared with the truth (testbed/identity_corpus.py, smaller)."""

from __future__ import annotations

import pytest

from testbed.identity_corpus import run

pytestmark = pytest.mark.orthanc


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    return run(people_count=90, seed=3, store_url=None, workdir=tmp_path_factory.mktemp("corpus"))


def test_automatic_links_are_right(evaluation):
    assert evaluation.linked, "nothing was linked"
    assert evaluation.precision >= 0.99, evaluation.report()
    assert not evaluation.false_links, evaluation.report()


def test_twins_and_namesakes_are_never_linked(evaluation):
    kinds = set(evaluation.kin_pairs.values())
    assert kinds == {"twin", "namesake"}, "the corpus lost its hard cases"
    assert evaluation.kin_links == {}, evaluation.report()


def test_most_records_of_one_person_are_linked_and_the_rest_wait_for_review(evaluation):
    assert evaluation.recall >= 0.7, evaluation.report()
    found = len((evaluation.linked | evaluation.review) & evaluation.true_pairs) / len(evaluation.true_pairs)
    assert found >= 0.9, evaluation.report()


def test_deterministic_rules_hold(evaluation):
    """A's legacy issuer is one namespace with A's (one Patient); an Other Patient ID naming
    another record's Patient ID links the two however their demographics differ."""
    assert evaluation.namespace_merged >= 1, evaluation.report()
    assert evaluation.other_id_pairs, evaluation.report()
    assert evaluation.other_id_pairs <= evaluation.linked, evaluation.report()
