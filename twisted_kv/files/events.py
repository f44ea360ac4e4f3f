# -*- test-case-name: tests.test_files_events -*-
"""
File events for live feeds: what a committed change of the store means for
the file system.

Every file operation ends with exactly one change of a manifest key that
tells the whole story (see L{twisted_kv.files._records}):

  - a manifest is written: C{stored}, or C{renamed} when the manifest says
    which path it was renamed from;
  - a tombstone is written: C{deleted}, unless the file was renamed away
    (the C{renamed} event of the new path already said so);
  - a tombstone expires (or is deleted): nothing.

Chunks, leases and directories yield nothing.
"""

from __future__ import annotations

from typing import Optional

from twisted_kv.core.records import Change
from twisted_kv.files._errors import CorruptFile
from twisted_kv.files._paths import is_manifest_key, path_of_entry_key
from twisted_kv.files._records import Manifest, decode_entry


def file_event_for(change: Change) -> Optional[dict]:
    """
    The file event for C{change}, or C{None} when it is not one.

    @return: C{{"type": "file", "op": "stored"|"deleted"|"renamed",
        "path": "/abs/path", "size": N}}, with C{"from"} (the old path) for
        a rename; the caller adds the C{"revision"}.
    """
    if change.kind != "put" or change.record is None or not is_manifest_key(change.key):
        return None
    path = path_of_entry_key(change.key)
    if path is None:
        return None
    try:
        content = decode_entry(change.record.value)
    except CorruptFile:
        return None
    event = {"type": "file", "path": path.text, "size": content.size}
    if isinstance(content, Manifest):
        if content.renamed_from is None:
            return {**event, "op": "stored"}
        return {**event, "op": "renamed", "from": content.renamed_from}
    if content.moved_to is None:
        return {**event, "op": "deleted"}
    return None
