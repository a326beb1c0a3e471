"""The DICOM attributes the mapping reads, by query level.

Sources ask archives for exactly these (QIDO-RS `includefield`, C-FIND identifiers) and
keep only these when reading files, so a sync moves no more metadata than it maps.
Tags are the 8-hex-digit keys of DICOM JSON (PS3.18 F.2.1.1).
"""

# Patient module (PS3.3 C.7.1.1)
PATIENT = {
    "00100010": "PatientName",
    "00100020": "PatientID",
    "00100021": "IssuerOfPatientID",
    "00100024": "IssuerOfPatientIDQualifiersSequence",
    "00100022": "TypeOfPatientID",
    "00101002": "OtherPatientIDsSequence",
    "00100030": "PatientBirthDate",
    "00100040": "PatientSex",
}

# General Study module (PS3.3 C.7.2.1) plus the query-only study attributes of PS3.4 C.6.1.1.2
STUDY = {
    "0020000D": "StudyInstanceUID",
    "00080020": "StudyDate",
    "00080030": "StudyTime",
    "00080201": "TimezoneOffsetFromUTC",
    "00080050": "AccessionNumber",
    "00080051": "IssuerOfAccessionNumberSequence",
    "00080090": "ReferringPhysicianName",
    "00081060": "NameOfPhysiciansReadingStudy",
    "00081030": "StudyDescription",
    "00081032": "ProcedureCodeSequence",
    "00401002": "ReasonForTheRequestedProcedure",
    "0040100A": "ReasonForRequestedProcedureCodeSequence",
    "00400275": "RequestAttributesSequence",
    "00080061": "ModalitiesInStudy",
    "00201206": "NumberOfStudyRelatedSeries",
    "00201208": "NumberOfStudyRelatedInstances",
    "00080080": "InstitutionName",
}

# General Series module (PS3.3 C.7.3.1) plus NumberOfSeriesRelatedInstances (query only)
SERIES = {
    "0020000E": "SeriesInstanceUID",
    "00200011": "SeriesNumber",
    "00080060": "Modality",
    "0008103E": "SeriesDescription",
    "00201209": "NumberOfSeriesRelatedInstances",
    "00180015": "BodyPartExamined",
    "00200060": "Laterality",
    "00080021": "SeriesDate",
    "00080031": "SeriesTime",
    "00081050": "PerformingPhysicianName",
    "00081070": "OperatorsName",
}

# SOP Common and instance-level attributes (PS3.3 C.12.1, C.7.6.1)
INSTANCE = {
    "00080018": "SOPInstanceUID",
    "00080016": "SOPClassUID",
    "00200013": "InstanceNumber",
    "00080008": "ImageType",
    "00700080": "ContentLabel",
    "0040A043": "ConceptNameCodeSequence",
    "00420010": "DocumentTitle",
    # series.laterality when the series has no Laterality (0020,0060), e.g. mammography
    "00200062": "ImageLaterality",
}

ALL = {**PATIENT, **STUDY, **SERIES, **INSTANCE}
