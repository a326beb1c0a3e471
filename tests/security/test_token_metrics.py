"""Token checks counted for the metrics (`facade_token_checks_total`): an operator alerts on a
rise of refusals (an authorization server rotating keys, a client with a broken clock)."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from tests.support.smart_auth import rsa_jwk

pytestmark = pytest.mark.auth_server


def checks(outcome: str) -> float:
    return REGISTRY.get_sample_value("facade_token_checks_total", {"outcome": outcome}) or 0.0


def test_accepted_and_refused_tokens_are_counted_apart(app, auth_server):
    client = app.test_client()
    accepted, refused = checks("accepted"), checks("refused")
    good = auth_server.sign({"scope": "system/*.rs"})
    expired = auth_server.sign({"scope": "system/*.rs", "exp": int(time.time()) - 900})
    forged = auth_server.sign({"scope": "system/*.rs"}, key=rsa_jwk("x")[1], kid="nope")
    for _ in range(3):
        assert client.get("/fhir/ImagingStudy", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    for token in (expired, forged):
        assert client.get("/fhir/ImagingStudy", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.get("/fhir/ImagingStudy").status_code == 401  # no token at all: nothing to check
    assert checks("accepted") - accepted == 3
    assert checks("refused") - refused == 2
