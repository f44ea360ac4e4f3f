"""
A linearizability checker for single-key histories (Wing and Gong's search,
with the memoization of Lowe and of Porcupine).

Each key is a register holding C{None} or a C{(value, version)} pair.  An
operation is recorded with its invocation and response times and what the
client saw; an operation whose outcome is unknown (504, timeout) has no
response time and may or may not have taken effect, at any point after its
invocation.  The history of a key is linearizable when some total order of
its operations respects real time (an operation that returned before another
was invoked comes first) and replays correctly on the register.
"""

from __future__ import annotations

import random
import sys
from typing import Any, Optional

from attrs import define

# What an operation observed, by kind:
#   read:   ("value", (value, version)) or ("absent", None)
#   write:  ("ok", version) or ("failed", reason)  (reason: "precondition",
#           "exists", "not_found")
#   any:    ("unknown", None)


@define
class Op:
    """
    One client operation on one key.

    @ivar kind: C{"get"}, C{"put"} or C{"delete"}.
    @ivar value: the value written by a put.
    @ivar condition: C{None}, C{("match", version)}, C{"absent"} (If-None-Match)
        or C{"create"} (POST).
    @ivar result: what the client saw (see the module comment).
    """

    kind: str
    invoked: float
    returned: Optional[float] = None
    value: Any = None
    condition: Any = None
    result: Any = None


def random_operation(rng: random.Random, history: list[Op], writer: str, now: float) -> Op:
    """
    A client's next operation on a key whose operations so far are
    C{history}, drawn with C{rng}: reads and blind writes most often, then
    compare-and-set (against the last version seen), create and delete.

    @param writer: names the writer in the values it writes.
    """
    kind = rng.choice(["get", "get", "put", "put", "cas", "create", "delete"])
    op = Op("get" if kind == "get" else "delete" if kind == "delete" else "put", now)
    if op.kind == "put":
        op.value = f"{writer}-{rng.random():.6f}".encode()
        if kind == "cas":
            known = [
                o.result[1]
                for o in history
                if o.result and o.result[0] in ("ok", "value") and o.result[1] is not None
            ]
            version = known[-1] if known else "1.1"
            if isinstance(version, tuple):
                version = version[1]
            op.condition = ("match", version)
        elif kind == "create":
            op.condition = "create"
    return op


def _unseen(version: Any) -> bool:
    return isinstance(version, tuple) and version[0] == "?"


def _condition_holds(op: Op, state: Any) -> bool:
    if op.condition is None:
        return op.kind == "put" or state is not None
    if op.condition in ("absent", "create"):
        return state is None
    return state is not None and state[1] == op.condition[1]


def _failure_reason(op: Op) -> str:
    if op.condition is None:
        return "not_found"
    return "exists" if op.condition == "create" else "precondition"


def _step(op: Op, state: Any) -> tuple[bool, Any]:
    """
    Replay C{op} on register C{state}: whether what it observed is possible
    there, and the state after it.
    """
    outcome, detail = op.result
    if op.kind == "get":
        if outcome == "absent":
            return state is None, state
        if state is None or state[0] != detail[0]:
            return False, state
        if state[1] == detail[1]:
            return True, state
        # a write whose outcome was unknown: now its version is seen
        return _unseen(state[1]), detail
    holds = _condition_holds(op, state)
    if outcome == "failed":
        return (not holds and detail == _failure_reason(op)), state
    if not holds:
        return False, state
    if op.kind == "delete":
        return True, None
    version = detail if outcome == "ok" else ("?", id(op))
    return True, (op.value, version)


def check(history: list[Op]) -> bool:
    """
    Whether C{history} (one key's operations) is linearizable.
    """
    ops = list(history)
    infinity = float("inf")
    ends = [op.returned if op.returned is not None else infinity for op in ops]
    seen: set = set()
    # The search recurses once per operation placed.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 2 * len(ops) + 1000))

    def search(remaining: frozenset, state: Any) -> bool:
        if not any(ops[i].returned is not None for i in remaining):
            return True
        key = (remaining, repr(state))
        if key in seen:
            return False
        seen.add(key)
        horizon = min(ends[i] for i in remaining)
        for i in sorted(remaining, key=lambda i: ops[i].invoked):
            op = ops[i]
            if op.invoked > horizon:
                break
            if op.returned is None and search(remaining - {i}, state):
                # an unknown outcome may also never take effect
                return True
            ok, after = _step(op, state)
            if ok and search(remaining - {i}, after):
                return True
        return False

    return search(frozenset(range(len(ops))), None)
