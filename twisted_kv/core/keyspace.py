# -*- test-case-name: tests.test_keyspace -*-
"""
The one place where client keys and file-system paths become store keys.

The store holds several namespaces side by side; a store key is a one-letter
namespace tag followed by the name within that namespace, so that no client
key can ever address a file's chunks and the C{/kv} listing never shows them.
"""

from __future__ import annotations

from typing import Optional

from twisted_kv.errors import InvalidRequest

MAX_KEY_BYTES = 1024

USER = "k"
FILES = "f"


def check_user_key(key: str) -> str:
    """
    Validate a client key (already percent-decoded).

    @raise InvalidRequest: the key is empty or longer than 1024 UTF-8 bytes.
    """
    if not key:
        raise InvalidRequest("the key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidRequest(f"the key is longer than {MAX_KEY_BYTES} bytes")
    return key


def user_key(key: str) -> str:
    """
    The store key of client key C{key}.
    """
    return USER + check_user_key(key)


def file_key(name: str) -> str:
    """
    The store key of file-system entry C{name} (chunks, manifests, ...).
    """
    return FILES + name


def namespace_of(store_key: str) -> str:
    return store_key[:1]


def name_of(store_key: str) -> str:
    """
    The client key or file-system name inside C{store_key}.
    """
    return store_key[1:]


def to_user(store_key: Optional[str]) -> Optional[str]:
    return None if store_key is None else store_key[1:]
