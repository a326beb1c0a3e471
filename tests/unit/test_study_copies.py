"""One ImagingStudy from the copies of several archives (app/store/copies.py)."""

from __future__ import annotations

import itertools

from app.store.copies import merge_copies

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _series(uid, number, modality, count):
    return {"uid": uid, "number": number, "modality": {"system": DCM, "code": modality}, "numberOfInstances": count}


def _copy(source, series, description="Head"):
    return {
        "resourceType": "ImagingStudy",
        "id": "1.2.3",
        "status": "available",
        "modality": [s["modality"] for s in series],
        "subject": {"reference": "Patient/p"},
        "endpoint": [{"reference": f"Endpoint/{source}"}],
        "numberOfSeries": len(series),
        "numberOfInstances": sum(s["numberOfInstances"] for s in series),
        "description": description,
        "series": series,
    }


def test_a_single_copy_is_served_as_it_is():
    copy = _copy("a", [_series("1.2.3.1", 1, "CT", 10)])
    assert merge_copies({"a": copy}) is copy


def test_two_archives_give_one_study_with_both_endpoints_and_every_series():
    a = _copy("a", [_series("1.2.3.1", 1, "CT", 10)], description="from a")
    b = _copy("b", [_series("1.2.3.1", 1, "CT", 10), _series("1.2.3.2", 2, "SR", 1)], description="from b")
    merged = merge_copies({"a": a, "b": b})
    assert merged["endpoint"] == [{"reference": "Endpoint/b"}, {"reference": "Endpoint/a"}]
    assert merged["description"] == "from b"  # the most complete copy is the base
    assert [s["uid"] for s in merged["series"]] == ["1.2.3.1", "1.2.3.2"]
    assert "endpoint" not in merged["series"][0]  # both archives hold it
    assert merged["series"][1]["endpoint"] == [{"reference": "Endpoint/b"}]  # only b does
    assert [m["code"] for m in merged["modality"]] == ["CT", "SR"]
    assert (merged["numberOfSeries"], merged["numberOfInstances"]) == (2, 11)


def test_the_merge_does_not_depend_on_order():
    copies = {
        "a": _copy("a", [_series("1.2.3.2", 2, "MR", 5)]),
        "b": _copy("b", [_series("1.2.3.1", 1, "MR", 5)]),
        "c": _copy("c", [_series("1.2.3.1", 1, "MR", 5), _series("1.2.3.3", None, "SR", 1)]),
    }
    results = [merge_copies(dict(p)) for p in itertools.permutations(copies.items())]
    assert all(r == results[0] for r in results)
    assert [s["uid"] for s in results[0]["series"]] == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]  # by number, then uid


def test_copies_are_not_changed():
    a = _copy("a", [_series("1.2.3.1", 1, "CT", 10)])
    b = _copy("b", [_series("1.2.3.2", 2, "CT", 3)])
    before = repr((a, b))
    merge_copies({"a": a, "b": b})
    assert repr((a, b)) == before
