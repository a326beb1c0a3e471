"""`/admin/identity/…`: the review queue and a person's link decisions over HTTP.

The same functions as `imaging-facade identity …` (app/identity/review.py). Plain JSON, not
FHIR; a blueprint of its own so that an admin scope can guard it as a whole.

- `GET  /admin/identity/links?status=review|linked|manual-link|manual-unlink|all&patient=ID&limit=N&cursor=C`:
  a page of pairs, best first, with `total` (how many pairs the listing holds, all pages
  together) and, when more follow, `next` (the URL of the next page) and `cursor` (its token)
- `GET  /admin/identity/explain?a=ID&b=ID`
- `POST /admin/identity/link`   `{"a": ID, "b": ID}`
- `POST /admin/identity/unlink` `{"a": ID, "b": ID}`
"""

from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, jsonify, request

from app.api.interactions import IDENTITY_REVIEW, serves
from app.api.state import ApiState, current_state
from app.identity import review
from app.identity.review import IdentityError
from app.identity.settings import IdentityConfig
from app.ids import valid_id
from app.store.repository import Store

bp = Blueprint("admin_identity", __name__)


def _store() -> Store:
    return current_state().store


def _rules() -> IdentityConfig:
    return current_state().config.identity


@bp.errorhandler(IdentityError)
def _identity_error(err: IdentityError) -> tuple[Response, int]:
    return jsonify({"error": str(err)}), err.status


def _patient_id(value: object, name: str) -> str:
    value = value.removeprefix("Patient/") if isinstance(value, str) else value
    if not valid_id(value):
        raise IdentityError(f"'{name}' must be a Patient id")
    return value


def _limit() -> int:
    raw = request.args.get("limit", "1000")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= review.MAX_PAGE:
        raise IdentityError(f"'limit' must be a whole number from 1 to {review.MAX_PAGE}")
    return int(raw)


@bp.get("/links")
@serves(IDENTITY_REVIEW)
def list_links() -> Response:
    status = request.args.get("status", "review")
    patient = request.args.get("patient")
    limit = _limit()
    page = review.page_pairs(
        _store(),
        None if status == "all" else status,
        _patient_id(patient, "patient") if patient else None,
        limit,
        request.args.get("cursor"),
    )
    answer = {"status": status, "total": page["total"], "count": len(page["pairs"]), "pairs": page["pairs"]}
    if page["next"] is not None:
        query = {"status": status, **({"patient": patient} if patient else {}), "limit": limit, "cursor": page["next"]}
        answer["cursor"] = page["next"]
        answer["next"] = f"{request.script_root}{request.path}?{urlencode(query)}"
    return jsonify(answer)


@bp.get("/explain")
@serves(IDENTITY_REVIEW)
def explain() -> Response:
    a = _patient_id(request.args.get("a"), "a")
    b = _patient_id(request.args.get("b"), "b")
    return jsonify(review.explain(_store(), a, b, _rules()))


def _pair_body() -> tuple[str, str]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise IdentityError('the body must be a JSON object {"a": "<Patient id>", "b": "<Patient id>"}')
    return _patient_id(body.get("a"), "a"), _patient_id(body.get("b"), "b")


@bp.post("/link")
@serves(IDENTITY_REVIEW)
def link() -> Response:
    return jsonify(review.link(_store(), *_pair_body(), _rules()))


@bp.post("/unlink")
@serves(IDENTITY_REVIEW)
def unlink() -> Response:
    return jsonify(review.unlink(_store(), *_pair_body(), _rules()))


def init_app(app: Flask, state: ApiState) -> None:
    app.register_blueprint(bp, url_prefix="/admin/identity")
