"""From a request's bearer token to its `Access`, or the refusal: 401 without a usable token
(RFC 6750 §3: `WWW-Authenticate: Bearer`, with `error="invalid_token"` when one was sent),
403 when its scopes do not cover what the request needs (`error="insufficient_scope"`).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Request
from werkzeug.datastructures import Headers

from app.api.interactions import SEARCH_TYPE, Interaction, current_interaction
from app.config import SecurityConfig
from app.errors import FhirError
from app.security import bulk, scope
from app.security.access import Access
from app.security.scopes import may_update_patients, needed, parse_scopes

#: RFC 6750 b64token (the scheme name is matched apart: case-insensitive matching of the
#: token's characters would cost a case fold per character on every request)
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
FORM = "application/x-www-form-urlencoded"


def _quoted(text: str) -> str:
    return text.replace("\\", "/").replace('"', "'")


def challenge(realm: str, error: str | None = None, description: str | None = None, scope: str | None = None) -> str:
    parts = [f'realm="{_quoted(realm)}"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{_quoted(description)}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(parts)


def bearer_token(headers: Headers, realm: str) -> str:
    """The token of `Authorization: Bearer …`; 401 when there is none or it is malformed."""
    value = headers.get("Authorization")
    if not value or not value[:7].lower().startswith("bearer"):
        raise FhirError(
            401,
            "login",
            "this server needs an OAuth2 bearer token (Authorization: Bearer …)",
            headers={"WWW-Authenticate": challenge(realm)},
        )
    scheme, _, token = value.partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        raise unauthorized(realm, "the Authorization header does not hold a bearer token")
    return token


def unauthorized(realm: str, reason: str) -> FhirError:
    return FhirError(
        401,
        "login",
        f"invalid bearer token: {reason}",
        headers={"WWW-Authenticate": challenge(realm, "invalid_token", reason)},
    )


def forbidden(realm: str, reason: str, scope: str | None = None) -> FhirError:
    return FhirError(
        403, "forbidden", reason, headers={"WWW-Authenticate": challenge(realm, "insufficient_scope", reason, scope)}
    )


def _patient_id(value: object) -> str | None:
    """SMART's `patient` is a Patient id; tolerate the `Patient/123` form some servers send."""
    if not isinstance(value, str) or not value:
        return None
    return value[len("Patient/") :] if value.startswith("Patient/") else value


def access_from_claims(security: SecurityConfig, claims: dict[str, Any]) -> Access:
    """A checked token's claims -> its Access. A token with patient/ scopes must name its
    patient (the launch context, claim `security.patient_claim`); it then sees that patient's
    compartment only, whatever other scopes it has. user/ and system/ scopes alone carry no
    patient restriction, even when the token names a patient."""
    scopes, grants = parse_scopes(claims.get("scope", claims.get("scp")))
    patient = _patient_id(claims.get(security.patient_claim))
    if any(grant.context == "patient" for grant in grants):
        if patient is None:
            raise forbidden(
                security.realm,
                f"the token has patient/ scopes but names no patient (no "
                f"'{security.patient_claim}' claim): its patient context is unknown",
            )
    else:
        patient = None
    client_id = claims.get("client_id") or claims.get("azp")
    subject = claims.get("sub") or client_id
    return Access(
        open=False,
        subject=str(subject) if subject is not None else None,
        client_id=str(client_id) if client_id is not None else None,
        scopes=scopes,
        grants=grants,
        patient=patient,
    )


def _enforce_across_patients(access: Access, interaction: Interaction, realm: str) -> None:
    """`Patient/$match` and the identity review API look across every patient: refused to a
    token bound to one patient; `$match` needs Patient search, review needs Patient update."""
    if access.patient is not None:
        raise forbidden(
            realm, f"{interaction.name} searches across patients; a token bound to one patient may not use it"
        )
    if interaction.permission == "u":
        if not may_update_patients(access.scopes):
            raise forbidden(
                realm,
                f"{interaction.name} needs a scope such as system/Patient.u or user/Patient.u "
                "(linking writes both Patients)",
                scope="user/Patient.u system/Patient.u",
            )
    elif not scope.allows(access, interaction.scoped_on, interaction.permission or "s"):
        rtype = interaction.scoped_on
        raise forbidden(
            realm,
            f"{interaction.name} needs a scope such as user/{rtype}.rs or system/{rtype}.rs",
            scope=f"user/{rtype}.rs system/{rtype}.rs",
        )


def enforce(access: Access, request: Request, realm: str) -> None:
    """403 unless the scopes cover the request: checked before any query runs."""
    interaction = current_interaction()
    if interaction is None:  # a route that declares no interaction grants nothing beyond the token
        return
    if interaction.bulk:
        bulk.enforce(access, interaction, realm)
        return
    if interaction.across_patients:
        _enforce_across_patients(access, interaction, realm)
        return
    rtype = (request.view_args or {}).get("rtype")
    params = list(request.args.items(multi=True))
    if interaction is SEARCH_TYPE and request.method == "POST" and request.mimetype == FORM:
        params += list(request.form.items(multi=True))
    for resource_type, permission, why in needed(interaction, rtype, params):
        if scope.allows(access, resource_type, permission):
            continue
        verb = "read" if permission == "r" else "search"
        because = f" (asked by {why.split('=')[0]})" if why else ""
        raise forbidden(
            realm,
            f"the token's scopes do not allow to {verb} {resource_type}{because}: it needs a scope such as "
            f"patient/{resource_type}.{permission}, user/{resource_type}.{permission} or "
            f"system/{resource_type}.{permission}",
            scope=" ".join(f"{ctx}/{resource_type}.{permission}" for ctx in ("patient", "user", "system")),
        )
