"""Sync: the archives' studies into the store, sources -> mapping -> identity -> store.

run.py       one skeleton for a full sync, a date-window poll and a change-feed step
batch.py     studies mapped one at a time, stored a batch at a time, or quarantined
watch.py     every source polled on its own interval until stopped
ondemand.py  a searched patient's studies fetched from the archive first
explain.py   what one DICOM file becomes, and why (`imaging-facade map`)
"""

from app.sync.run import sync_incremental, sync_source
from app.sync.summary import SyncSummary

__all__ = ["SyncSummary", "sync_incremental", "sync_source"]
