# -*- test-case-name: tests.test_storage_committer_crash -*-
"""
Property tests of L{twisted_kv.storage.committer.GroupCommitter}: appends
over many reactor turns, with commits in flight finishing at random moments
and the power cut at any file-system call, then a crash and a recovery.

Every record whose Deferred fired is back, and what comes back is a prefix
of the records in the order they were appended, lazy ones included.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.storage.committer import SYNC_INTERVAL, GroupCommitter
from twisted_kv.storage.log import Log
from twisted_kv.storage.testing import CrashableFileSystem, HeldRunner

DIRECTORY = "data/n1"

steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(min_value=1, max_value=4)),
        st.tuples(st.just("lazy"), st.integers(min_value=1, max_value=2)),
        st.just(("turn",)),
        st.just(("release",)),
        st.just(("second",)),
        st.tuples(st.just("power_cut"), st.integers(min_value=0, max_value=8)),
    ),
    min_size=10,
    max_size=60,
)


class _Run:
    """
    A committer over a log with a small segment size, and the payloads
    appended and acknowledged so far.
    """

    def __init__(self, policy: str) -> None:
        self.fs = CrashableFileSystem()
        log = Log(self.fs, DIRECTORY, segment_bytes=150)
        list(log.replay())
        self.runner = HeldRunner()
        self.clock = Clock()
        self.committer = GroupCommitter(log, policy, self.runner, self.clock)
        self.appended: list[bytes] = []
        self.acked: set[bytes] = set()

    def apply(self, step: tuple[object, ...]) -> None:
        kind = step[0]
        if kind in ("append", "lazy"):
            for _ in range(int(str(step[1]))):
                payload = b"record %d" % len(self.appended)
                self.appended.append(payload)
                self.committer.append(1, payload, lazy=kind == "lazy").addCallbacks(
                    lambda _, payload=payload: self.acked.add(payload), lambda failure: None
                )
        elif kind == "turn":
            self.clock.advance(0)
        elif kind == "release":
            if self.runner.held:
                self.runner.release()
        elif kind == "second":
            self.clock.advance(SYNC_INTERVAL)
        else:
            self.fs.cut_power_after(int(str(step[1])))

    def check(self, case: SynchronousTestCase, fs: CrashableFileSystem) -> None:
        """
        The records found on C{fs} are a prefix of the appended ones that
        holds every acknowledged one.
        """
        log = Log(fs, DIRECTORY)
        recovered = [payload for _, payload in log.replay()]
        case.assertEqual(recovered, self.appended[: len(recovered)])
        case.assertEqual(self.acked - set(recovered), set())


class CommitterCrashTests(SynchronousTestCase):
    """
    What the committer acknowledges survives what its policy promises.
    """

    @settings(max_examples=200)
    @given(steps, st.integers(min_value=0, max_value=2**32))
    def test_always_power_cut(self, sequence: list[tuple[object, ...]], seed: int) -> None:
        """
        With C{always}, every acknowledged record survives a power cut.
        """
        run = _Run("always")
        for step in sequence:
            if not run.fs.powered:
                break
            run.apply(step)
        run.check(self, run.fs.crash(random.Random(seed)))

    @settings(max_examples=100)
    @given(steps, st.sampled_from(["everysec", "never"]))
    def test_kill(self, sequence: list[tuple[object, ...]], policy: str) -> None:
        """
        With C{everysec} and C{never}, every acknowledged record survives
        the process being killed (the kernel keeps what was written).
        """
        run = _Run(policy)
        for step in sequence:
            if step[0] != "power_cut":
                run.apply(step)
        run.check(self, run.fs)

    @settings(max_examples=100)
    @given(steps, st.integers(min_value=0, max_value=2**32))
    def test_everysec_power_cut(self, sequence: list[tuple[object, ...]], seed: int) -> None:
        """
        With C{everysec}, a power cut loses at most what was acknowledged
        since the last sync: after a stop, nothing.
        """
        run = _Run("everysec")
        for step in sequence:
            if step[0] != "power_cut":
                run.apply(step)
        stopped = run.committer.stop()
        while run.runner.held:
            run.runner.release()
        self.successResultOf(stopped)
        self.assertEqual(run.acked, set(run.appended))
        run.check(self, run.fs.crash(random.Random(seed)))
