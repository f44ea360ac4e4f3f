# -*- test-case-name: tests.test_files -*-
"""
Files stored in the cluster: a file system over L{twisted_kv.interfaces.IKeyValue},
shared by the FTP and HTTP C{/files} front ends.

Files are split into chunks under one upload id and described by a manifest
written last, so readers see whole files only; see L{twisted_kv.files._fs}
for the protocol and L{twisted_kv.files._paths} for the keys.
"""

from twisted_kv.files._collector import OrphanCollector
from twisted_kv.files._errors import (
    BadPath,
    CorruptFile,
    DirectoryNotEmpty,
    FileChanged,
    FileExists,
    FileNotFound,
    FileTooLarge,
    IsADirectory,
    NotADirectory,
    NotPermitted,
    TransferAborted,
    UploadExpired,
)
from twisted_kv.files._fs import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_FILE_BYTES,
    Download,
    Entry,
    FileSystem,
    StoredFile,
    Upload,
)
from twisted_kv.files._paths import RESTORE_PHASES, ROOT, FSPath, is_lease_key, restore_phase
from twisted_kv.files._records import is_stored_file, provisional_lease
from twisted_kv.files.events import file_event_for

__all__ = [
    "BadPath",
    "CorruptFile",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_FILE_BYTES",
    "DirectoryNotEmpty",
    "Download",
    "Entry",
    "FSPath",
    "FileChanged",
    "FileExists",
    "FileNotFound",
    "FileSystem",
    "FileTooLarge",
    "IsADirectory",
    "NotADirectory",
    "NotPermitted",
    "OrphanCollector",
    "RESTORE_PHASES",
    "ROOT",
    "StoredFile",
    "TransferAborted",
    "Upload",
    "UploadExpired",
    "file_event_for",
    "is_lease_key",
    "is_stored_file",
    "provisional_lease",
    "restore_phase",
]
