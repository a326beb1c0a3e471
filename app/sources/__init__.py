"""Archive adapters. Each yields `StudyRecord`s (DICOM JSON) one study at a time."""
