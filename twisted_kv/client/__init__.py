# -*- test-case-name: tests.test_client_logic -*-
"""
Clients of a cluster: L{Client}, a synchronous one, and L{TxClient}, a
Twisted one whose calls return Deferreds::

    from twisted_kv.client import Client, TxClient

Both are thin I/O layers over L{twisted_kv.client._logic}, which builds
the requests and reads the answers and the watch frames; what they return
(L{Value}, L{Page}) and raise (L{twisted_kv.errors}) is the same.

The Twisted client (L{TxClient}, L{Watcher}) is imported on first use, so
that a program using only L{Client}, such as C{kvctl}, starts without
loading Twisted, treq and Autobahn.
"""

from typing import Any

from twisted_kv.client._logic import DEFAULT_URL, Page, Value
from twisted_kv.client.sync import Client, Watch

__all__ = ["DEFAULT_URL", "Client", "Page", "TxClient", "Value", "Watch", "Watcher"]

_TWISTED = frozenset({"TxClient", "Watcher"})


def __getattr__(name: str) -> Any:
    if name in _TWISTED:
        from twisted_kv.client import txclient

        return getattr(txclient, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
