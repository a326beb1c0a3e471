"""The profiles (StructureDefinition) are public like /metadata: a validator resolving a
`meta.profile` URL holds no token. Nothing else is."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.auth_server


def test_profiles_answer_without_a_token_and_data_does_not(app):
    client = app.test_client()
    assert client.get("/fhir/StructureDefinition/imaging-facade-patient").status_code == 200
    assert client.get("/fhir/StructureDefinition?type=Patient").status_code == 200
    assert client.get("/fhir/Patient").status_code == 401
    assert client.get("/fhir/StructureDefinition/../Patient").status_code in (401, 404)
