# -*- test-case-name: tests.test_files -*-
"""
Failures of file-system operations.

They are L{twisted_kv.errors.KVError}s, so the HTTP front end answers them
with their C{status} and C{code} like any other error; the FTP front end maps
them to replies in one table.
"""

from __future__ import annotations

from twisted_kv.errors import InvalidRequest, KeyExists, KeyNotFound, KVError, ValueTooLarge


class BadPath(InvalidRequest):
    """The path is not acceptable."""


class FileNotFound(KeyNotFound):
    """No such file or directory."""


class FileExists(KeyExists):
    """The file or directory already exists."""


class IsADirectory(KVError):
    """The path names a directory."""

    status = 409
    code = "is_a_directory"


class NotADirectory(KVError):
    """The path (or one of its parents) is not a directory."""

    status = 409
    code = "not_a_directory"


class DirectoryNotEmpty(KVError):
    """The directory is not empty."""

    status = 409
    code = "not_empty"


class NotPermitted(KVError):
    """The operation is not permitted."""

    status = 403
    code = "forbidden"


class FileTooLarge(ValueTooLarge):
    """The file is larger than the configured maximum."""


class FileChanged(KVError):
    """The file was replaced or removed while it was being read."""

    status = 409
    code = "file_changed"


class UploadExpired(KVError):
    """The upload stalled for longer than its lease and was collected."""

    status = 408
    code = "upload_expired"


class CorruptFile(KVError):
    """A chunk of the file is missing or has the wrong size."""

    status = 500
    code = "corrupt_file"


class TransferAborted(KVError):
    """The transfer was stopped before it completed."""

    status = 400
    code = "aborted"
