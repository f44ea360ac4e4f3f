# -*- test-case-name: tests.test_membership -*-
"""
Tests for L{twisted_kv.core.membership}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.membership import ALIVE, DEAD, SUSPECT, Membership, new_incarnation

TIMEOUT = 2.0


def _table() -> Membership:
    return Membership(["a", "b", "c"], "a", incarnation=100, failure_timeout=TIMEOUT)


class StateTests(SynchronousTestCase):
    """
    Alive, then suspect at half the timeout, then dead.
    """

    def test_never_heard_is_dead(self) -> None:
        """
        A peer never heard from is dead.
        """
        self.assertEqual(_table().state("b", 0.0), DEAD)

    def test_phases(self) -> None:
        """
        A peer last heard at 10 is alive until 11, suspect from 11 (half the
        timeout), dead from 12 (the whole timeout).
        """
        table = _table()
        table.heard("b", 7, 10.0)
        self.assertEqual(table.state("b", 10.0), ALIVE)
        self.assertEqual(table.state("b", 10.999), ALIVE)
        self.assertEqual(table.state("b", 11.0), SUSPECT)
        self.assertEqual(table.state("b", 11.999), SUSPECT)
        self.assertEqual(table.state("b", 12.0), DEAD)
        self.assertEqual(table.state("b", 1e9), DEAD)

    def test_heard_again(self) -> None:
        """
        A sign of life brings a suspect or dead peer back to alive.
        """
        table = _table()
        table.heard("b", 7, 10.0)
        self.assertEqual(table.state("b", 13.0), DEAD)
        table.heard("b", 7, 13.0)
        self.assertEqual(table.state("b", 13.5), ALIVE)

    def test_self_always_alive(self) -> None:
        """
        A node never suspects itself, without ever hearing from itself.
        """
        self.assertEqual(_table().state("a", 1e9), ALIVE)

    def test_silent_for(self) -> None:
        """
        L{Membership.silent_for} is the time since a peer was last heard
        from, 0 for the node itself and C{None} for a peer never heard from.
        """
        table = _table()
        table.heard("b", 7, 10.0)
        self.assertEqual(
            [table.silent_for(node, 12.5) for node in ("a", "b", "c")], [0.0, 2.5, None]
        )

    @given(
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
        st.floats(min_value=0, max_value=10 * TIMEOUT, allow_nan=False),
    )
    def test_state_by_silence(self, heard_at: float, silence: float) -> None:
        """
        The state depends only on how long the peer has been silent.
        """
        table = _table()
        table.heard("b", 1, heard_at)
        now = heard_at + silence
        elapsed = now - heard_at
        expected = ALIVE if elapsed < TIMEOUT / 2 else SUSPECT if elapsed < TIMEOUT else DEAD
        self.assertEqual(table.state("b", now), expected)


class IncarnationTests(SynchronousTestCase):
    """
    Restarts show up as new incarnations.
    """

    def test_first_contact_is_new(self) -> None:
        """
        The first message from a peer reports a new incarnation.
        """
        table = _table()
        self.assertTrue(table.heard("b", 7, 1.0))
        self.assertEqual(table.incarnation("b"), 7)

    def test_same_incarnation(self) -> None:
        """
        Further messages of the same incarnation are not restarts.
        """
        table = _table()
        table.heard("b", 7, 1.0)
        self.assertFalse(table.heard("b", 7, 2.0))

    def test_restart(self) -> None:
        """
        A different incarnation is a restart, even within the timeout, and
        replaces the recorded one.
        """
        table = _table()
        table.heard("b", 7, 1.0)
        self.assertTrue(table.heard("b", 8, 1.1))
        self.assertEqual(table.incarnation("b"), 8)
        self.assertFalse(table.heard("b", 8, 1.2))

    def test_unknown(self) -> None:
        """
        An unheard peer has no known incarnation; the node knows its own.
        """
        table = _table()
        self.assertIsNone(table.incarnation("c"))
        self.assertEqual(table.incarnation("a"), 100)


class TransitionTests(SynchronousTestCase):
    """
    Nodes going down and coming back up, each reported once.
    """

    def test_down_once(self) -> None:
        """
        A node heard from is reported newly dead once the timeout passes,
        and only once; nodes never heard from and the node itself never
        are.
        """
        table = _table()
        table.heard("b", 7, 10.0)
        self.assertEqual(table.newly_dead(11.5), [])
        self.assertEqual(table.newly_dead(12.0), ["b"])
        self.assertEqual(table.newly_dead(20.0), [])

    def test_back_up(self) -> None:
        """
        A node heard from after it was reported dead is up again, even in
        the same incarnation, and can then be reported dead again.
        """
        table = _table()
        table.heard("b", 7, 10.0)
        table.newly_dead(12.0)
        self.assertTrue(table.heard("b", 7, 13.0))
        self.assertFalse(table.heard("b", 7, 13.1))
        self.assertEqual(table.newly_dead(15.1), ["b"])

    def test_silent_blip(self) -> None:
        """
        A node silent past the timeout but heard from again before anyone
        asked is neither down nor back.
        """
        table = _table()
        table.heard("b", 7, 10.0)
        self.assertFalse(table.heard("b", 7, 12.5))
        self.assertEqual(table.newly_dead(13.0), [])


class LiveTests(SynchronousTestCase):
    """
    L{Membership.live}: the nodes the planner may use.
    """

    def test_live(self) -> None:
        """
        Alive and suspect nodes count as live, with their incarnations;
        dead and unheard ones do not; the node itself always does.
        """
        table = _table()
        table.heard("b", 7, 10.0)
        self.assertEqual(table.live(10.5), {"a": 100, "b": 7})
        self.assertEqual(table.live(11.5), {"a": 100, "b": 7})
        self.assertEqual(table.live(12.0), {"a": 100})

    @given(
        st.dictionaries(
            st.sampled_from(["a", "b", "c", "zz"]),
            st.floats(min_value=0, max_value=100, allow_nan=False),
        ),
        st.floats(min_value=0, max_value=110, allow_nan=False),
    )
    def test_live_count(self, heard: dict[str, float], now: float) -> None:
        """
        L{Membership.live_count} counts exactly the nodes L{Membership.live}
        lists.
        """
        table = _table()
        for node, at in heard.items():
            table.heard(node, 1, at)
        self.assertEqual(table.live_count(now), len(table.live(now)))

    def test_strangers_not_listed(self) -> None:
        """
        A node outside the cluster's node list is never live, even if heard.
        """
        table = _table()
        table.heard("zz", 3, 10.0)
        self.assertEqual(table.live(10.0), {"a": 100})

    def test_restart_shows_new_incarnation(self) -> None:
        """
        After a restart, C{live} gives the new incarnation, so the planner
        treats the old one as gone.
        """
        table = _table()
        table.heard("b", 7, 10.0)
        table.heard("b", 9, 10.2)
        self.assertEqual(table.live(10.3)["b"], 9)


class NewIncarnationTests(SynchronousTestCase):
    """
    L{new_incarnation} orders a node's runs by their start.
    """

    def test_later_start_larger(self) -> None:
        """
        A run started a millisecond later has the larger incarnation,
        whatever the random bits; runs of the same millisecond differ by
        them; incarnations fit the peer protocol's 64 bits for centuries.
        """
        now = 1_796_000_000.0
        earlier = new_incarnation(now, (1 << 63) - 1)
        self.assertLess(earlier, new_incarnation(now + 0.001, 0))
        self.assertNotEqual(new_incarnation(now, 1), new_incarnation(now, 2))
        self.assertLess(new_incarnation(now + 200 * 365 * 86400, (1 << 63) - 1), 1 << 63)
