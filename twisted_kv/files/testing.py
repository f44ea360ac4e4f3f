# -*- test-case-name: tests.test_files -*-
"""
An L{IKeyValue} wrapper for tests of code built on the file system: it can
hold operations until released (to interleave concurrent readers and
writers deterministically) and make chosen operations fail.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from attrs import define, field
from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from twisted_kv.core.keyspace import file_key
from twisted_kv.files._paths import CHUNKS_PREFIX, LEASES_PREFIX
from twisted_kv.interfaces import ChangeEvent, IKeyValue, ReadResult

#: Chooses operations: called with the method name (C{"get"}, C{"put"},
#: C{"delete"}, C{"list_keys"}) and the key (the prefix for C{list_keys}).
Selector = Callable[[str, str], bool]

#: The key prefix of each kind of file-system key.
PREFIXES = {
    "chunk": CHUNKS_PREFIX,
    "lease": LEASES_PREFIX,
    "manifest": file_key("m"),
    "directory": file_key("d"),
}


def on(method: str, kind: str) -> Selector:
    """
    Select the C{method} operations on keys of one kind (a key of
    L{PREFIXES}).
    """
    prefix = PREFIXES[kind]
    return lambda called, key: called == method and key.startswith(prefix)


@define
class HeldOperation:
    """
    An operation waiting for L{release}.
    """

    method: str
    key: str
    _run: Callable[[], Deferred[Any]]
    _result: Deferred[Any] = field(factory=Deferred)

    def release(self) -> None:
        """
        Run the operation now and pass its outcome on.
        """
        self._run().chainDeferred(self._result)


@implementer(IKeyValue)
class ControlledKeyValue:
    """
    Passes every operation to C{kv}, except those selected by L{hold} (kept
    in L{held} until released) or by L{fail_with} (failed at once).

    @ivar held: the held operations, oldest first.
    @ivar degraded: answer reads as if no majority of the cluster was
        reachable (L{ReadResult.degraded}).
    """

    def __init__(self, kv: IKeyValue) -> None:
        self.held: list[HeldOperation] = []
        self.degraded = False
        self._kv = kv
        self._hold: Optional[Selector] = None
        self._failures: list[tuple[Selector, Exception]] = []

    @property
    def max_value_bytes(self) -> int:
        return self._kv.max_value_bytes

    def hold(self, selector: Optional[Selector]) -> None:
        """
        Hold the operations C{selector} picks from now on (C{None}: none).
        """
        self._hold = selector

    def fail_with(self, selector: Selector, error: Exception) -> None:
        """
        Fail the next operation C{selector} picks with C{error}, without
        running it.
        """
        self._failures.append((selector, error))

    def release_all(self) -> None:
        """
        Release every held operation, including those held while doing so.
        """
        while self.held:
            self.held.pop(0).release()

    def _call(self, method: str, key: str, run: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        for index, (selector, error) in enumerate(self._failures):
            if selector(method, key):
                del self._failures[index]
                return fail(error)
        if self._hold is not None and self._hold(method, key):
            operation = HeldOperation(method, key, run)
            self.held.append(operation)
            return operation._result
        return run()

    def get(self, key: str) -> Deferred[Any]:
        def read() -> Deferred[Any]:
            return self._kv.get(key).addCallback(
                lambda result: ReadResult(result.record, result.degraded or self.degraded)
            )

        return self._call("get", key, read)

    def put(self, key: str, value: bytes, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return self._call("put", key, lambda: self._kv.put(key, value, *args, **kwargs))

    def delete(self, key: str, if_match: Optional[str] = None) -> Deferred[Any]:
        return self._call("delete", key, lambda: self._kv.delete(key, if_match))

    def list_keys(self, prefix: str, start_after: Optional[str], limit: int) -> Deferred[Any]:
        return self._call(
            "list_keys", prefix, lambda: self._kv.list_keys(prefix, start_after, limit)
        )

    def subscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._kv.subscribe(listener)

    def unsubscribe(self, listener: Callable[[ChangeEvent], None]) -> None:
        self._kv.unsubscribe(listener)

    def replay(self, after: int) -> Deferred[Any]:
        return self._kv.replay(after)
