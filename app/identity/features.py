"""What a Patient tells about who it is, in the form matching compares, and its blocking keys.

Features are plain JSON (kept in the store next to each Patient, so scoring a candidate reads
one small row, not the resource): normalized name words per DICOM PN component group
(alphabetic, ideographic, phonetic; R4 marks the last two with the iso21090-EN-representation
extension), the birth date, the administrative gender where it says male or female, and
every identifier with its system reduced to its namespace (`identity.same_namespace`).

Blocking keys name small groups of patients worth scoring against each other; a new patient
is scored only against those that share a key with it, found through an index, never by
reading every patient. Each key is built to survive one kind of error the scoring forgives:

- `i:<value>`: an identifier value, whatever its system (a shared Other Patient ID, or the
  same number under an issuer spelled differently);
- `b:<year>-<lower of month/day>-<higher>`: the birth date, with day and month in an order
  that a transposition does not change;
- `n:<code>|<code>`: the sound of the family name and of the first given name, in sorted
  order, so a swap of the two still meets (typos in the birth date, or none at all);
- `f:<code>|<year>` and `d:<code>|<month/day>`: one name with the birth year, or with the day
  and month (a typo in the other name and one in the birth date);
- `p:<code>|<four letters>`: the sound of one name with the first four letters of the
  other, filed both ways (family-given and given-family), so a typo that changes the sound of
  one name still meets when the birth date is missing or wrong too, and so does a swap of
  family and given name with a typo in one; the family name counts with its parts joined
  (`Sal T` and `Salt` are one);
- `e:<value, or value less one character>|<initials>`: each Other Patient ID as it is and
  with one character left out, once per character, beside the initials of the family and
  given name. Two numbers one typo apart (a digit changed, added, dropped, or two neighbours
  swapped) share one of these (the deletion neighbourhood of Wolf Garbe's SymSpell), and the
  initials keep a number sequence that is dense (every neighbour of a number is someone
  else's) from filing strangers together. The Patient ID itself (the first identifier) gets
  none: an archive's own numbers are such a sequence, and one of them a typo away is another
  patient of it. Values from 5 to 16 characters only (shorter ones collide, longer ones are
  not typed by hand).

Every key family was kept for the true pairs of the Febrl sets it finds that the others miss
(scripts/bench_blocking.py measures them; docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import re
import unicodedata

import jellyfish

from app.identity.settings import IdentityConfig

EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
_WORD = re.compile(r"[^\W\d_]+")
_FULL_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def normalize_words(text: str) -> list[str]:
    """Words of a name without case or accents (`Müller-Lüdenscheidt` -> muller, ludenscheidt)."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return _WORD.findall(plain)


def sound(word: str) -> str:
    """Metaphone of a Latin-script word; other scripts (kanji, kana, hangul) as written."""
    if word.isascii():
        return jellyfish.metaphone(word) or word
    return word


def _representation(name: dict) -> str:
    for ext in name.get("extension") or []:
        if ext.get("url") == EN_REPRESENTATION and ext.get("valueCode") in ("IDE", "SYL"):
            return ext["valueCode"]
    return "ABC"


def features(patient: dict, rules: IdentityConfig) -> dict:
    """The match features of a Patient resource (pure: no store, no clock)."""
    names = []
    for name in patient.get("name") or []:
        if not isinstance(name, dict):
            continue
        family = normalize_words(name.get("family") or "")
        given = [w for g in name.get("given") or [] if isinstance(g, str) for w in normalize_words(g)]
        if family or given:
            names.append({"rep": _representation(name), "family": family, "given": given})
    ids = []
    for ident in patient.get("identifier") or []:
        system, value = ident.get("system"), ident.get("value")
        if isinstance(system, str) and isinstance(value, str) and value:
            pair = [rules.namespace(system), value]
            if pair not in ids:
                ids.append(pair)
    birth = patient.get("birthDate") if isinstance(patient.get("birthDate"), str) else None
    gender = patient.get("gender") if patient.get("gender") in ("male", "female") else None
    return {"names": names, "birth": birth, "gender": gender, "ids": ids}


#: lengths of an Other Patient ID that get one-typo keys (`e:`)
TYPO_ID_LENGTHS = range(5, 17)


def _joined(words: list[str]) -> str | None:
    return "".join(words) if words else None


def blocking_keys(feats: dict) -> list[str]:
    """The keys under which a patient with these features is filed (see the module doc)."""
    keys: list[str] = [f"i:{value}" for _, value in feats["ids"]]
    birth = feats.get("birth") or ""
    year = birth[:4] if len(birth) >= 4 else None
    day_of_year = None
    if _FULL_DATE.match(birth):
        month, day = birth[5:7], birth[8:10]
        day_of_year = f"{min(month, day)}-{max(month, day)}"
        keys.append(f"b:{year}-{day_of_year}")
    initials = set()
    for name in feats["names"]:
        family = sound(name["family"][0]) if name["family"] else None
        given = sound(name["given"][0]) if name["given"] else None
        if family and given:
            keys.append("n:" + "|".join(sorted((family, given))))
        for word in (family, given):  # given too: family and given may be swapped
            if word and year:
                keys.append(f"f:{word}|{year}")
            if word and day_of_year:
                keys.append(f"d:{word}|{day_of_year}")
        whole_family, first_given = _joined(name["family"]), name["given"][0] if name["given"] else None
        if whole_family and first_given:
            keys.append(f"p:{sound(whole_family)}|{first_given[:4]}")
            keys.append(f"p:{sound(first_given)}|{whole_family[:4]}")
        initials.add("".join(sorted(w[0] for w in (whole_family, first_given) if w)))
    for _, value in feats["ids"][1:]:
        if len(value) in TYPO_ID_LENGTHS:
            less_one = dict.fromkeys([value, *(value[:i] + value[i + 1 :] for i in range(len(value)))])
            keys.extend(f"e:{shorter}|{pair}" for shorter in less_one for pair in sorted(initials))
    unique = list(dict.fromkeys(k[:200] for k in keys))
    return unique
