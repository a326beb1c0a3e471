"""The DICOM attributes the mapping reads: one named constant per tag, and the tags by query level.

Sources ask archives for exactly the query-level tables below (QIDO-RS `includefield`, C-FIND
identifiers) and keep only these when reading files, so a sync moves no more metadata than it
maps. Tags are the 8-hex-digit keys of DICOM JSON (PS3.18 F.2.1.1); each constant names its
attribute keyword of the DICOM data dictionary (PS3.6).
"""

# --- Patient module (PS3.3 C.7.1.1) ------------------------------------------------------------
PATIENT_NAME = "00100010"  # PatientName
PATIENT_ID = "00100020"  # PatientID
ISSUER_OF_PATIENT_ID = "00100021"  # IssuerOfPatientID
ISSUER_QUALIFIERS = "00100024"  # IssuerOfPatientIDQualifiersSequence
TYPE_OF_PATIENT_ID = "00100022"  # TypeOfPatientID
OTHER_PATIENT_IDS = "00101002"  # OtherPatientIDsSequence
BIRTH_DATE = "00100030"  # PatientBirthDate
SEX = "00100040"  # PatientSex

# --- General Study module (PS3.3 C.7.2.1) and the query-only study attributes (PS3.4 C.6.1.1.2)
STUDY_UID = "0020000D"  # StudyInstanceUID
STUDY_DATE = "00080020"  # StudyDate
STUDY_TIME = "00080030"  # StudyTime
TZ_OFFSET = "00080201"  # TimezoneOffsetFromUTC
ACCESSION = "00080050"  # AccessionNumber
ACCESSION_ISSUER = "00080051"  # IssuerOfAccessionNumberSequence
REFERRING = "00080090"  # ReferringPhysicianName
READING = "00081060"  # NameOfPhysiciansReadingStudy
STUDY_DESCRIPTION = "00081030"  # StudyDescription
PROCEDURE_CODES = "00081032"  # ProcedureCodeSequence
REASON_TEXT = "00401002"  # ReasonForTheRequestedProcedure
REASON_CODES = "0040100A"  # ReasonForRequestedProcedureCodeSequence
REQUEST_ATTRIBUTES = "00400275"  # RequestAttributesSequence
MODALITIES_IN_STUDY = "00080061"  # ModalitiesInStudy
STUDY_SERIES_COUNT = "00201206"  # NumberOfStudyRelatedSeries
STUDY_INSTANCE_COUNT = "00201208"  # NumberOfStudyRelatedInstances
INSTITUTION = "00080080"  # InstitutionName

# --- General Series module (PS3.3 C.7.3.1) and NumberOfSeriesRelatedInstances (query only) ----
SERIES_UID = "0020000E"  # SeriesInstanceUID
SERIES_NUMBER = "00200011"  # SeriesNumber
MODALITY = "00080060"  # Modality
SERIES_DESCRIPTION = "0008103E"  # SeriesDescription
SERIES_INSTANCE_COUNT = "00201209"  # NumberOfSeriesRelatedInstances
BODY_PART = "00180015"  # BodyPartExamined
LATERALITY = "00200060"  # Laterality
SERIES_DATE = "00080021"  # SeriesDate
SERIES_TIME = "00080031"  # SeriesTime
PERFORMING = "00081050"  # PerformingPhysicianName
OPERATORS = "00081070"  # OperatorsName

# --- SOP Common and instance-level attributes (PS3.3 C.12.1, C.7.6.1) -------------------------
SOP_INSTANCE_UID = "00080018"  # SOPInstanceUID
SOP_CLASS_UID = "00080016"  # SOPClassUID
INSTANCE_NUMBER = "00200013"  # InstanceNumber
IMAGE_TYPE = "00080008"  # ImageType
CONTENT_LABEL = "00700080"  # ContentLabel
CONCEPT_NAME = "0040A043"  # ConceptNameCodeSequence
DOCUMENT_TITLE = "00420010"  # DocumentTitle
IMAGE_LATERALITY = "00200062"  # ImageLaterality

# --- attributes nested in the sequence items above. Sources keep whole sequences, so these
# arrive with their parent and are not asked for on their own.
# Code Sequence Macro (PS3.3 Table 8.8-1)
CODE_VALUE = "00080100"  # CodeValue
CODING_SCHEME_DESIGNATOR = "00080102"  # CodingSchemeDesignator
CODING_SCHEME_VERSION = "00080103"  # CodingSchemeVersion
CODE_MEANING = "00080104"  # CodeMeaning
LONG_CODE_VALUE = "00080119"  # LongCodeValue
URN_CODE_VALUE = "00080120"  # URNCodeValue
# HL7v2 Hierarchic Designator Macro (PS3.3 10.14) and the issuer qualifiers (PS3.3 C.7.1.1)
LOCAL_NAMESPACE_ENTITY_ID = "00400031"  # LocalNamespaceEntityID
UNIVERSAL_ENTITY_ID = "00400032"  # UniversalEntityID
UNIVERSAL_ENTITY_ID_TYPE = "00400033"  # UniversalEntityIDType
IDENTIFIER_TYPE_CODE = "00400035"  # IdentifierTypeCode

# --- the tags by query level ---------------------------------------------------------------------
PATIENT = {
    PATIENT_NAME: "PatientName",
    PATIENT_ID: "PatientID",
    ISSUER_OF_PATIENT_ID: "IssuerOfPatientID",
    ISSUER_QUALIFIERS: "IssuerOfPatientIDQualifiersSequence",
    TYPE_OF_PATIENT_ID: "TypeOfPatientID",
    OTHER_PATIENT_IDS: "OtherPatientIDsSequence",
    BIRTH_DATE: "PatientBirthDate",
    SEX: "PatientSex",
}

STUDY = {
    STUDY_UID: "StudyInstanceUID",
    STUDY_DATE: "StudyDate",
    STUDY_TIME: "StudyTime",
    TZ_OFFSET: "TimezoneOffsetFromUTC",
    ACCESSION: "AccessionNumber",
    ACCESSION_ISSUER: "IssuerOfAccessionNumberSequence",
    REFERRING: "ReferringPhysicianName",
    READING: "NameOfPhysiciansReadingStudy",
    STUDY_DESCRIPTION: "StudyDescription",
    PROCEDURE_CODES: "ProcedureCodeSequence",
    REASON_TEXT: "ReasonForTheRequestedProcedure",
    REASON_CODES: "ReasonForRequestedProcedureCodeSequence",
    REQUEST_ATTRIBUTES: "RequestAttributesSequence",
    MODALITIES_IN_STUDY: "ModalitiesInStudy",
    STUDY_SERIES_COUNT: "NumberOfStudyRelatedSeries",
    STUDY_INSTANCE_COUNT: "NumberOfStudyRelatedInstances",
    INSTITUTION: "InstitutionName",
}

SERIES = {
    SERIES_UID: "SeriesInstanceUID",
    SERIES_NUMBER: "SeriesNumber",
    MODALITY: "Modality",
    SERIES_DESCRIPTION: "SeriesDescription",
    SERIES_INSTANCE_COUNT: "NumberOfSeriesRelatedInstances",
    BODY_PART: "BodyPartExamined",
    LATERALITY: "Laterality",
    SERIES_DATE: "SeriesDate",
    SERIES_TIME: "SeriesTime",
    PERFORMING: "PerformingPhysicianName",
    OPERATORS: "OperatorsName",
}

INSTANCE = {
    SOP_INSTANCE_UID: "SOPInstanceUID",
    SOP_CLASS_UID: "SOPClassUID",
    INSTANCE_NUMBER: "InstanceNumber",
    IMAGE_TYPE: "ImageType",
    CONTENT_LABEL: "ContentLabel",
    CONCEPT_NAME: "ConceptNameCodeSequence",
    DOCUMENT_TITLE: "DocumentTitle",
    # series.laterality when the series has no Laterality (0020,0060), e.g. mammography
    IMAGE_LATERALITY: "ImageLaterality",
}

ALL = {**PATIENT, **STUDY, **SERIES, **INSTANCE}

#: the nested attributes, which only arrive inside the sequences of ALL
NESTED = {
    CODE_VALUE: "CodeValue",
    CODING_SCHEME_DESIGNATOR: "CodingSchemeDesignator",
    CODING_SCHEME_VERSION: "CodingSchemeVersion",
    CODE_MEANING: "CodeMeaning",
    LONG_CODE_VALUE: "LongCodeValue",
    URN_CODE_VALUE: "URNCodeValue",
    LOCAL_NAMESPACE_ENTITY_ID: "LocalNamespaceEntityID",
    UNIVERSAL_ENTITY_ID: "UniversalEntityID",
    UNIVERSAL_ENTITY_ID_TYPE: "UniversalEntityIDType",
    IDENTIFIER_TYPE_CODE: "IdentifierTypeCode",
}

#: every attribute the mapping reads, at any level: what a header is checked for (shape.py)
READ = frozenset(ALL) | frozenset(NESTED)
