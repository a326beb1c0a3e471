"""Who may see how the server runs: errors that name the archives' internal addresses, in
`/health`, are for operators, not for whoever can reach the port.

An operator is who may use the identity review API (app/security/authorize.py): a token not
bound to a patient whose scopes may update Patients (`user/Patient.u`, `system/Patient.u`,
v1 `.write`), or anyone when the server runs open, as that API is then open too. A request
made on this host counts as well: from a loopback address and not through a proxy, since a
proxy on the same host would make every client look local (it names the client in
`Forwarded` or `X-Forwarded-For`).
"""

from __future__ import annotations

import ipaddress

from flask import request

from app.security.access import current_access
from app.security.scopes import may_update_patients

#: headers by which a proxy names the client it forwards for (RFC 7239, and the de facto ones)
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def from_this_host() -> bool:
    return is_loopback(request.remote_addr) and not any(name in request.headers for name in FORWARDING_HEADERS)


def sees_operations() -> bool:
    access = current_access()
    if access.open or (access.patient is None and may_update_patients(access.scopes)):
        return True
    return from_this_host()
