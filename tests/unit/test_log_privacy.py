"""The suite's log check (tests/support/log_privacy.py) finds patient data and only patient data.

It fails a whole run, so a false alarm blocks every change and a miss hides a leak."""

from tests.support.log_privacy import _patient_values, patient_data_hits


def test_the_check_knows_the_synced_files_patients():
    values = _patient_values()
    assert values.get("99000") == "patient ID"
    assert values.get("anders") == "patient name (security tests)"


def test_a_patient_id_or_name_in_a_log_line_is_found():
    values = _patient_values()
    lines = [
        ("imaging_facade.sync", "GET /studies?PatientID=99000&limit=10"),
        ("imaging_facade.sync", "matched ANDERS^ANN to an existing patient"),
        ("imaging_facade.sync", "study stored"),
    ]
    assert patient_data_hits(lines, values) == {
        ("imaging_facade.sync", "patient ID"): 1,
        ("imaging_facade.sync", "patient name (security tests)"): 1,
    }


def test_digits_inside_a_generated_uid_are_not_a_patient_id():
    values = _patient_values()
    uid = "1.2.826.0.1.3680043.8.498.10299000642341123456787765403398890234"
    lines = [("dicomweb_client.web", f'retrieve metadata of study "{uid}"')]
    assert patient_data_hits(lines, values) == {}
