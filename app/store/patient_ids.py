"""The deployment's Patient id key, and which scheme the store's Patient ids are of.

Patient ids are keyed digests of the patient's identifier (app/identity/keys.py). Every process
that maps studies into one store (sync, watch, on-demand fetches, Celery workers on other hosts)
must use the same key, so the store keeps it, as it keeps the paging secret: generated once,
in the `setting` table, the first time a process asks. A deployment that would rather keep it
out of the database gives it in the config (`identity.secret: ${PATIENT_ID_SECRET}`); the store
then keeps only a check value (an HMAC of a fixed text under the key), so a process started
with another key is refused before it writes a single id the others would not make.

Stores made before the key hold unkeyed ids, which anyone who knows the issuer can reverse by
trying every Patient ID. Such a store has Patients but no `patient-ids` setting: every command
that opens it is refused until `imaging-facade db upgrade` has re-keyed it (app/identity/rekey.py),
as it is when its schema is behind. A store without any Patient yet is marked at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from app.store.bookkeeping import Settings
from app.store.schema import SchemaMismatch

#: setting naming the scheme of the store's Patient ids; absent on a store of the old scheme
SCHEME_SETTING = "patient-ids"
SCHEME = "hmac-sha256"
KEY_SETTING = "patient-id-key"
CHECK_SETTING = "patient-id-key-check"
_CHECK_TEXT = b"imaging-facade patient id key check"


class KeyMismatch(Exception):
    """The configured key is not the one the store's Patient ids were made with."""


def check_value(key: bytes) -> str:
    return hmac.new(key, _CHECK_TEXT, hashlib.sha256).hexdigest()


def _setting(conn: Connection, key: str) -> str | None:
    row = conn.execute(text("SELECT value FROM setting WHERE key = :k"), {"k": key}).first()
    return row[0] if row else None


def resolve_key(engine: Engine, secret: str | None) -> bytes:
    """The Patient id key: the config's `secret`, or the one the store keeps (generated on first
    use); either way checked against the store's check value (written on first use)."""
    settings = Settings(engine)
    if secret is None:
        with engine.connect() as conn:
            kept, check = _setting(conn, KEY_SETTING), _setting(conn, CHECK_SETTING)
        if kept is None and check is not None:
            raise KeyMismatch(
                "identity.secret: this store's Patient ids were made with a key given in the config; "
                "set identity.secret to that key (an environment variable reference)"
            )
        key = settings.get(KEY_SETTING, lambda: secrets.token_urlsafe(32)).encode("utf-8")
    else:
        key = secret.encode("utf-8")
    if settings.get(CHECK_SETTING, lambda: check_value(key)) != check_value(key):
        raise KeyMismatch(
            "identity.secret: not the key this store's Patient ids were made with "
            "(every process sharing a store needs the same identity.secret)"
        )
    return key


def has_patients(conn: Connection) -> bool:
    found = conn.execute(text("SELECT 1 FROM resource_version WHERE rtype = 'Patient'")).first()
    return found is not None or conn.execute(text("SELECT 1 FROM patient_contribution")).first() is not None


def current(engine: Engine) -> bool:
    """Whether the store's Patient ids are of the keyed scheme; a store without Patients is
    marked so, and is."""
    with engine.connect() as conn:
        if _setting(conn, SCHEME_SETTING) == SCHEME:
            return True
        if has_patients(conn):
            return False
    Settings(engine).get(SCHEME_SETTING, lambda: SCHEME)
    return True


def check(engine: Engine) -> None:
    """Refuse (SchemaMismatch, upgradable) a store whose Patient ids are still of the old scheme."""
    if not current(engine):
        raise SchemaMismatch(
            "the store's Patient ids are of the old scheme (unkeyed digests that reveal the Patient ID) "
            "and must be re-keyed",
            upgradable=True,
        )
