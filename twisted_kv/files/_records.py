# -*- test-case-name: tests.test_files_records -*-
"""
The values stored under the file system's keys (see L{twisted_kv.files._paths}),
as compact JSON, and the pure rule deciding when an upload's chunks are
garbage.

A manifest key holds either a L{Manifest} (a file) or, for a short while
after the file is removed or renamed away, a L{Tombstone}: writing a
tombstone instead of deleting the key lets the one committed change say
what happened (and its size), and the tombstone's time-to-live removes it
silently.

An upload's L{Lease} records which paths may refer to its chunks.  Whoever
deletes the lease (conditionally, on the version it read) owns the deletion
of the chunks; nobody may delete a lease while a manifest at one of its
paths still refers to the upload.
"""

from __future__ import annotations

import json
from typing import Optional, Union

from attrs import evolve, frozen

from twisted_kv.files._errors import CorruptFile
from twisted_kv.files._paths import is_manifest_key

#: Lease states: chunks are being written; a path is being renamed; settled.
UPLOADING = "uploading"
MOVING = "moving"
COMMITTED = "committed"


def _encode(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _decode(value: bytes, what: str) -> dict:
    try:
        fields = json.loads(value)
    except ValueError:
        raise CorruptFile(f"unreadable {what}") from None
    if not isinstance(fields, dict):
        raise CorruptFile(f"unreadable {what}")
    return fields


@frozen
class Manifest:
    """
    A stored file: its bytes are the chunks C{0 .. chunk_count - 1} of upload
    C{upload}, each C{chunk_bytes} long except the last.

    @ivar mtime: when the file was stored, in seconds since the epoch.
    @ivar sha256: hex digest of the whole content.
    @ivar renamed_from: for a manifest written by a rename, the old path.
    """

    size: int
    mtime: float
    upload: str
    chunk_bytes: int
    sha256: str
    content_type: str = "application/octet-stream"
    renamed_from: Optional[str] = None

    @property
    def chunk_count(self) -> int:
        return -(-self.size // self.chunk_bytes)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_bytes, self.size - index * self.chunk_bytes)

    def renamed(self, old_path: str) -> Manifest:
        return evolve(self, renamed_from=old_path)

    def encode(self) -> bytes:
        fields = {
            "size": self.size,
            "mtime": self.mtime,
            "upload": self.upload,
            "chunk_bytes": self.chunk_bytes,
            "sha256": self.sha256,
            "content_type": self.content_type,
        }
        if self.renamed_from is not None:
            fields["renamed_from"] = self.renamed_from
        return _encode(fields)


@frozen
class Tombstone:
    """
    What remains of a removed file for a short while.

    @ivar moved_to: the new path when the file was renamed away, else
        C{None} (it was deleted).
    """

    size: int
    moved_to: Optional[str] = None

    def encode(self) -> bytes:
        return _encode({"gone": True, "size": self.size, "moved_to": self.moved_to})


def decode_entry(value: bytes) -> Union[Manifest, Tombstone]:
    """
    Decode the value of a manifest key.

    @raise CorruptFile: the value is not a manifest or tombstone.
    """
    fields = _decode(value, "manifest")
    try:
        if fields.get("gone"):
            return Tombstone(int(fields["size"]), fields["moved_to"])
        return Manifest(
            size=int(fields["size"]),
            mtime=float(fields["mtime"]),
            upload=str(fields["upload"]),
            chunk_bytes=int(fields["chunk_bytes"]),
            sha256=str(fields["sha256"]),
            content_type=str(fields["content_type"]),
            renamed_from=fields.get("renamed_from"),
        )
    except (KeyError, TypeError, ValueError):
        raise CorruptFile("unreadable manifest") from None


@frozen
class DirectoryEntry:
    """A directory, created at C{mtime}."""

    mtime: float

    def encode(self) -> bytes:
        return _encode({"mtime": self.mtime})

    @classmethod
    def decode(cls, value: bytes) -> DirectoryEntry:
        try:
            return cls(float(_decode(value, "directory")["mtime"]))
        except (KeyError, TypeError, ValueError):
            raise CorruptFile("unreadable directory") from None


@frozen
class Lease:
    """
    Who may refer to an upload's chunks.

    @ivar path: the path whose manifest refers (or will refer) to them.
    @ivar previous: while the file is renamed, the path it is renamed from
        (its manifest may still refer to the chunks).
    @ivar state: L{UPLOADING}, L{MOVING} or L{COMMITTED}.
    @ivar updated: when the lease was last written (seconds since the epoch).
    """

    path: str
    state: str
    updated: float
    previous: Optional[str] = None

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths whose manifests may refer to the upload."""
        return (self.path,) if self.previous is None else (self.path, self.previous)

    def encode(self) -> bytes:
        return _encode(
            {
                "path": self.path,
                "state": self.state,
                "updated": self.updated,
                "previous": self.previous,
            }
        )

    @classmethod
    def decode(cls, value: bytes) -> Lease:
        fields = _decode(value, "lease")
        try:
            return cls(
                str(fields["path"]),
                str(fields["state"]),
                float(fields["updated"]),
                fields["previous"],
            )
        except (KeyError, TypeError, ValueError):
            raise CorruptFile("unreadable lease") from None


def collectable(lease: Lease, referenced: bool, now: float, lease_seconds: float) -> bool:
    """
    Whether an upload's chunks are garbage.

    A settled upload that no manifest refers to any more is garbage at once.
    An upload still being written, or a rename in progress, is garbage only
    once its lease has not been renewed for C{lease_seconds}: its writer
    died or gave up.

    @param referenced: whether a manifest at one of C{lease.paths} refers to
        the upload.
    """
    if referenced:
        return False
    return lease.state == COMMITTED or now - lease.updated >= lease_seconds


def provisional_lease(value: bytes, now: float) -> bytes:
    """
    The lease a restore writes first for an upload whose saved lease is
    C{value}: the same paths, as an upload still being written at C{now}.
    Until the upload's manifests are restored, its chunks are then neither
    lease-less nor under a settled lease nobody refers to, both of which
    the collector deletes; the restore renews it, and writes the saved
    lease last.  An unreadable lease is written as it was.
    """
    try:
        lease = Lease.decode(value)
    except CorruptFile:
        return value
    return evolve(lease, state=UPLOADING, updated=now).encode()


def is_stored_file(store_key: str, value: bytes) -> bool:
    """
    Whether a record of a backup is a file: a manifest, not the tombstone
    of a file removed.
    """
    if not is_manifest_key(store_key):
        return False
    try:
        return isinstance(decode_entry(value), Manifest)
    except CorruptFile:
        return False
