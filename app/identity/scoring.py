"""How alike two patients are, in points, with the reason for every point.

A Fellegi-Sunter style score: each feature adds its weight, roughly log2 of how much more
often it agrees this way between records of one person than between records of two people
(an exact birth date is 8: 1 in ~30,000 pairs of strangers share one, most records of one
person do). Disagreement subtracts. The weights are set so that the hard cases of imaging
archives come out on the right side of the thresholds (app.identity.settings):

- twins share family name and birth date but not the given name (and often not the sex):
  7 + 8 - 5 (- 8) stays below `auto_link`;
- namesakes share the names but not the birth date: 7 + 6 - 10 stays below `review`;
- one person with a typo in one name, a day/month transposition or a digit typo in the birth
  date, or family and given name swapped, still reaches `auto_link`;
- a shared identifier (an Other Patient ID that is another record's Patient ID, in the same
  namespace) is certain even when both names disagree; only names and birth date all
  disagreeing (a reused or mistyped number) bring it down to review.

Scores explain themselves: `Score.contributions` lists (feature, points, reason) and the
reasons never quote names, dates or identifiers, so an explanation can be logged or shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rapidfuzz.distance import JaroWinkler, Levenshtein

from app.identity.features import sound

SHARED_IDENTIFIER = 30.0
SAME_ISSUER_OTHER_ID = -6.0
SAME_VALUE_OTHER_ISSUER = 2.0
FAMILY = {"same": 7.0, "similar": 5.0, "differs": -4.0}
GIVEN = {"same": 6.0, "similar": 4.0, "initial": 1.0, "differs": -5.0}
SWAP_PENALTY = -2.0
BIRTH = {"same": 8.0, "transposed": 4.0, "typo": 4.0, "same-year": 1.0, "differs": -10.0, "other-year": -5.0}
SEX = {"same": 1.0, "differs": -8.0}
#: Jaro-Winkler similarity from which two words count as one misspelled
SIMILAR = 0.9
#: ... and from which two words that sound alike (same Metaphone) do
SOUNDS_LIKE = 0.8
GROUP_NAMES = {"ABC": "alphabetic", "IDE": "ideographic", "SYL": "phonetic"}


@dataclass
class Score:
    points: float = 0.0
    contributions: list[tuple[str, float, str]] = field(default_factory=list)

    def add(self, feature: str, points: float, reason: str) -> None:
        self.points += points
        self.contributions.append((feature, points, reason))

    def grade(self, auto_link: float, review: float, possible: float) -> str:
        """The match-grade code of FHIR's $match for this score."""
        if self.points >= auto_link:
            return "certain"
        if self.points >= review:
            return "probable"
        if self.points >= possible:
            return "possible"
        return "certainly-not"

    def as_dict(self) -> dict:
        return {
            "points": round(self.points, 2),
            "contributions": [{"feature": f, "points": p, "reason": r} for f, p, r in self.contributions],
        }


def _word_agreement(a: str, b: str) -> str:
    if a == b:
        return "same"
    similarity = JaroWinkler.normalized_similarity(a, b)
    # Metaphone alone is too lenient for short names (John and Jane both sound JN)
    if similarity >= SIMILAR or (sound(a) == sound(b) and similarity >= SOUNDS_LIKE):
        return "similar"
    return "differs"


def _family(a: list[str], b: list[str]) -> tuple[float, str]:
    if not a or not b:
        return 0.0, "missing"
    if a == b:
        return FAMILY["same"], "same"
    joined_a, joined_b = " ".join(a), " ".join(b)
    if set(a) & set(b):  # a double family name of which one record holds one part
        return FAMILY["similar"], "one part of a compound name in common"
    if _word_agreement(joined_a, joined_b) == "similar":
        return FAMILY["similar"], "sounds alike or nearly the same spelling"
    return FAMILY["differs"], "differs"


def _given(a: list[str], b: list[str]) -> tuple[float, str]:
    if not a or not b:
        return 0.0, "missing"
    first_a, first_b = a[0], b[0]
    agreement = _word_agreement(first_a, first_b)
    if agreement == "same":
        return GIVEN["same"], "same first given name"
    if agreement == "similar":
        return GIVEN["similar"], "first given name sounds alike or nearly the same spelling"
    if (len(first_a) == 1 or len(first_b) == 1) and first_a[0] == first_b[0]:
        return GIVEN["initial"], "initial agrees"
    return GIVEN["differs"], "first given name differs"


def _names(a: list[dict], b: list[dict]) -> list[tuple[str, float, str]]:
    """The best-agreeing pair of name groups of the same representation, straight or swapped."""
    best: list[tuple[str, float, str]] | None = None
    best_points = float("-inf")
    for name_a in a:
        for name_b in b:
            if name_a["rep"] != name_b["rep"]:
                continue
            group = GROUP_NAMES[name_a["rep"]]
            fp, fr = _family(name_a["family"], name_b["family"])
            gp, gr = _given(name_a["given"], name_b["given"])
            options = [[(f"family name ({group})", fp, fr), (f"given name ({group})", gp, gr)]]
            sp1, sr1 = _family(name_a["family"], name_b["given"][:1])
            sp2, sr2 = _family(name_a["given"][:1], name_b["family"])
            if sp1 > 0 and sp2 > 0:
                options.append(
                    [
                        (f"family name ({group})", sp1, f"{sr1}, as the other's given name"),
                        (f"given name ({group})", sp2, f"{sr2}, as the other's family name"),
                        ("name order", SWAP_PENALTY, "family and given name swapped"),
                    ]
                )
            for option in options:
                total = sum(p for _, p, _ in option)
                if total > best_points:
                    best, best_points = option, total
    return best or []


def _birth(a: str | None, b: str | None) -> tuple[float, str]:
    if not a or not b:
        return 0.0, "missing on one side"
    if a == b:
        return BIRTH["same"], "same"
    if len(a) == len(b) == 10:
        if a[:4] == b[:4] and a[5:7] == b[8:10] and a[8:10] == b[5:7]:
            return BIRTH["transposed"], "day and month swapped"
        if Levenshtein.distance(a.replace("-", ""), b.replace("-", "")) == 1:
            return BIRTH["typo"], "one digit differs"
        return BIRTH["differs"], "differs"
    if a[:4] == b[:4]:  # one of them is a partial date (year or year-month)
        return BIRTH["same-year"], "same year (a partial date)"
    return BIRTH["other-year"], "other year (a partial date)"


def _identifiers(a: list, b: list) -> tuple[float, str] | None:
    pairs_a = {tuple(p) for p in a}
    pairs_b = {tuple(p) for p in b}
    if pairs_a & pairs_b:
        return SHARED_IDENTIFIER, "an identifier in the same namespace in common"
    systems_a = {s for s, _ in pairs_a}
    if any(s in systems_a for s, _ in pairs_b):
        # same issuer, another number: the issuer keeps them apart (may be a duplicate record)
        values = {(s, v) for s, v in pairs_a}
        if not any((s, v) in values for s, v in pairs_b):
            return SAME_ISSUER_OTHER_ID, "different identifiers from one issuer"
    if {v for _, v in pairs_a} & {v for _, v in pairs_b}:
        return SAME_VALUE_OTHER_ISSUER, "the same identifier value under another issuer"
    return None


def score(a: dict, b: dict) -> Score:
    """Score two patients' features (app.identity.features.features)."""
    result = Score()
    ident = _identifiers(a["ids"], b["ids"])
    if ident:
        result.add("identifier", *ident)
    for contribution in _names(a["names"], b["names"]):
        result.add(*contribution)
    result.add("birth date", *_birth(a.get("birth"), b.get("birth")))
    sex_a, sex_b = a.get("gender"), b.get("gender")
    if sex_a and sex_b:
        result.add("sex", SEX["same"] if sex_a == sex_b else SEX["differs"], "same" if sex_a == sex_b else "differs")
    else:
        result.add("sex", 0.0, "missing on one side")
    return result
