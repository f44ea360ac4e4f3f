# -*- test-case-name: tests.test_files_paths -*-
"""
File-system paths, and the one place where they become store keys.

Every key of the file system lives in the C{f} namespace of
L{twisted_kv.core.keyspace.file_key}.  Inside it::

    m<depth><path>        the manifest of the file at <path> (or its tombstone)
    d<depth><path>        the directory at <path>
    u/<upload-id>         the lease of an upload: who owns its chunks
    c/<upload-id>/<n>     chunk <n> of an upload

C{<path>} is absolute (C{/docs/a.txt}) and C{<depth>} is its number of
segments, so the direct children of a directory are exactly the keys under
C{m<depth + 1><path>/} and C{d<depth + 1><path>/}: listing a directory never
reads its grandchildren.  Upload ids are fixed-length lowercase hex, and chunk
numbers are decimal, so the chunks of one upload sort together and C{~} sorts
after all of them.
"""

from __future__ import annotations

import re
import secrets
from typing import Iterable, Optional

from attrs import frozen

from twisted_kv.core.keyspace import FILES, file_key, name_of, namespace_of
from twisted_kv.files._errors import BadPath

#: The longest path accepted, in UTF-8 bytes (store keys stay under 1 KiB).
MAX_PATH_BYTES = 900

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\]")
_ENTRY_KEY = re.compile(r"^([md])([0-9]+)(/.*)$", re.DOTALL)
_UPLOAD_ID_BYTES = 8


def _check_segment(segment: str) -> str:
    if segment in ("", ".", ".."):
        raise BadPath(f"{segment!r} is not a file name")
    if _FORBIDDEN.search(segment):
        raise BadPath(f"{segment!r} contains a forbidden character")
    try:
        segment.encode("utf-8")
    except UnicodeEncodeError:
        raise BadPath(f"{segment!r} is not valid UTF-8") from None
    return segment


@frozen
class FSPath:
    """
    A normalised absolute path: a tuple of segments, none of them empty,
    C{.} or C{..}, none holding a slash, a backslash or a control character.
    The root is the empty tuple.

    Construct it with L{FSPath.from_segments} or L{FSPath.parse}, which
    refuse anything else: a path can never name something outside the root.
    """

    segments: tuple[str, ...]

    @classmethod
    def from_segments(cls, segments: Iterable[str]) -> FSPath:
        """
        @raise BadPath: a segment is not an acceptable file name, or the path
            is too long.
        """
        path = cls(tuple(_check_segment(segment) for segment in segments))
        if len(path.text.encode("utf-8")) > MAX_PATH_BYTES:
            raise BadPath(f"the path is longer than {MAX_PATH_BYTES} bytes")
        return path

    @classmethod
    def parse(cls, text: str) -> FSPath:
        """
        Parse an absolute path such as C{/docs/a.txt} (C{/} is the root).

        @raise BadPath: the text is not a normalised absolute path.
        """
        if not text.startswith("/"):
            raise BadPath(f"{text!r} is not an absolute path")
        if text == "/":
            return ROOT
        return cls.from_segments(text[1:].split("/"))

    @property
    def text(self) -> str:
        return "/" + "/".join(self.segments)

    @property
    def depth(self) -> int:
        return len(self.segments)

    @property
    def is_root(self) -> bool:
        return not self.segments

    @property
    def name(self) -> str:
        return self.segments[-1] if self.segments else ""

    @property
    def parent(self) -> FSPath:
        return FSPath(self.segments[:-1])

    def child(self, name: str) -> FSPath:
        return FSPath.from_segments(self.segments + (name,))

    def ancestors(self) -> list[FSPath]:
        """
        Every directory above this path, from the root's child down to the
        parent (the root itself always exists and is left out).
        """
        return [FSPath(self.segments[:n]) for n in range(1, len(self.segments))]

    def is_within(self, other: FSPath) -> bool:
        """
        Whether this path is C{other} or below it.
        """
        return self.segments[: other.depth] == other.segments

    def __str__(self) -> str:
        return self.text


ROOT = FSPath(())


def _entry_name(tag: str, path: FSPath) -> str:
    return f"{tag}{path.depth}{path.text}"


def _children_name(tag: str, directory: FSPath) -> str:
    prefix = directory.text if directory.is_root else directory.text + "/"
    return f"{tag}{directory.depth + 1}{prefix}"


def manifest_key(path: FSPath) -> str:
    return file_key(_entry_name("m", path))


def directory_key(path: FSPath) -> str:
    return file_key(_entry_name("d", path))


def child_manifests_prefix(directory: FSPath) -> str:
    """
    The key prefix of the manifests of the files directly in C{directory}.
    """
    return file_key(_children_name("m", directory))


def child_directories_prefix(directory: FSPath) -> str:
    """
    The key prefix of the directories directly in C{directory}.
    """
    return file_key(_children_name("d", directory))


def path_of_entry_key(store_key: str) -> Optional[FSPath]:
    """
    The path of a manifest or directory key, or C{None} for any other key.
    """
    if namespace_of(store_key) != FILES:
        return None
    match = _ENTRY_KEY.match(name_of(store_key))
    if match is None:
        return None
    return FSPath.parse(match.group(3))


def is_manifest_key(store_key: str) -> bool:
    return store_key.startswith(file_key("m"))


def new_upload_id() -> str:
    return secrets.token_hex(_UPLOAD_ID_BYTES)


def lease_key(upload_id: str) -> str:
    return file_key(f"u/{upload_id}")


LEASES_PREFIX = file_key("u/")


def upload_id_of_lease_key(store_key: str) -> str:
    return store_key[len(LEASES_PREFIX) :]


def chunk_key(upload_id: str, index: int) -> str:
    return file_key(f"c/{upload_id}/{index}")


def chunks_prefix(upload_id: str) -> str:
    return file_key(f"c/{upload_id}/")


CHUNKS_PREFIX = file_key("c/")


def after_chunks_of(upload_id: str) -> str:
    """
    A C{start_after} key that skips every chunk of C{upload_id}.
    """
    return file_key(f"c/{upload_id}/~")


def upload_id_of_chunk_key(store_key: str) -> str:
    return store_key[len(CHUNKS_PREFIX) :].split("/", 1)[0]


#: The order in which a restore writes the keys of a backup (see
#: L{restore_phase}); client keys go with the chunks.
RESTORE_PHASES = 4


def restore_phase(store_key: str) -> int:
    """
    When a restore writes C{store_key}, so that no file is ever visible
    half restored and the collector never takes a restored file's chunks:
    0 for chunks (and every key outside the file system), 1 for
    directories, 2 for manifests, 3 for upload leases.  A manifest names
    chunks and sits in a directory, both already there; an upload's saved
    lease comes last, once the manifests refer to its chunks, and until
    then a provisional one stands in for it
    (L{twisted_kv.files._records.provisional_lease}), written before
    anything else.
    """
    if namespace_of(store_key) != FILES:
        return 0
    tag = name_of(store_key)[:1]
    return {"c": 0, "d": 1, "m": 2, "u": 3}.get(tag, 0)


def is_lease_key(store_key: str) -> bool:
    return store_key.startswith(LEASES_PREFIX)
