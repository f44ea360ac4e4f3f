# -*- test-case-name: tests.test_files -*-
"""
Failures of file-system operations.

They are L{twisted_kv.errors.KVError}s, so the HTTP front end answers them
with their C{status} and C{code} like any other error; the FTP front end maps
them to replies in one table.
"""

from __future__ import annotations

from twisted_kv.errors import (
    InvalidRequest,
    KeyExists,
    KeyNotFound,
    KVError,
    ValueTooLarge,
)


class BadPath(InvalidRequest):
    """The path is not acceptable."""


class FileNotFound(KeyNotFound):
    """No such file or directory."""


class FileExists(KeyExists):
    """The file or directory already exists."""


class IsADirectory(KVError, status=409, code="is_a_directory"):
    """The path names a directory."""


class NotADirectory(KVError, status=409, code="not_a_directory"):
    """The path (or one of its parents) is not a directory."""


class DirectoryNotEmpty(KVError, status=409, code="not_empty"):
    """The directory is not empty."""


class NotPermitted(KVError, status=403, code="forbidden"):
    """The operation is not permitted."""


class FileTooLarge(ValueTooLarge):
    """The file is larger than the configured maximum."""


class FileChanged(KVError, status=409, code="file_changed"):
    """The file was replaced or removed while it was being read."""


class UploadExpired(KVError, status=408, code="upload_expired"):
    """The upload stalled for longer than its lease and was collected."""


class CorruptFile(KVError, status=500, code="corrupt_file"):
    """A chunk of the file is missing or has the wrong size."""


class TransferAborted(KVError, status=400, code="aborted"):
    """The transfer was stopped before it completed."""
