# -*- test-case-name: tests.test_local -*-
"""
The seams of twisted_kv that have more than one implementation.

L{IKeyValue} is what every front end (HTTP, WebSocket, FTP) talks to: the
single-process L{twisted_kv.cluster.local.LocalKeyValue} and the cluster's
L{twisted_kv.cluster.coordinator.Coordinator} both provide it, so the front ends are
tested without a cluster and run unchanged on one.

Keys given to L{IKeyValue} are I{store keys}: L{twisted_kv.core.keyspace}
maps client keys and file paths onto them, in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from attrs import Factory, field, frozen
from zope.interface import Attribute, Interface

from twisted_kv.core.records import Change, Record

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from twisted_kv.core.backup import BackupRecord


@frozen
class ReadResult:
    """
    What a read found.

    @ivar record: the live record, or C{None} when the key does not exist.
    @ivar degraded: C{True} when no majority of the cluster answered and the
        result came from whichever replicas were reachable (the newest version
        among them), so it is not guaranteed linearizable.
    """

    record: Optional[Record]
    degraded: bool = False


@frozen
class WriteResult:
    """
    An acknowledged write.

    @ivar version: the new version, as an opaque string.
    @ivar created: whether the key did not exist before (C{PUT}: 201 vs 200).
    """

    version: str
    created: bool


@frozen
class KeyPage:
    """
    One page of a key listing; C{next} is the C{start_after} of the next page,
    or C{None} when this is the last page.

    @ivar degraded: some keys were listed from a replica other than their
        partition's primary, which was unreachable: the page holds every
        acknowledged key but may hold keys of writes still in flight.
    """

    keys: list[str]
    next: Optional[str]
    degraded: bool = False


# A revision's bits above this shift number the term of the partition leader
# that assigned it.  Within one term every node receives a prefix of that
# leader's single stream of changes; a new leader may announce again, under a
# new revision, a change that some nodes received in an earlier term.
REVISION_TERM_SHIFT = 32


def revision_term(revision: int) -> int:
    return revision >> REVISION_TERM_SHIFT


@frozen
class ChangeEvent:
    """
    A committed change, as delivered to watchers.

    @ivar revision: a cluster-wide number that only grows (see
        L{REVISION_TERM_SHIFT}).
    @ivar gap: changes between the previous event delivered and this one may
        have been missed (this node was cut off from the partition leader);
        watchers must be told to re-read.
    @ivar previous: the revision numbered just before this one (0 before the
        first change of the cluster): whoever holds this change and every
        later one misses nothing after C{previous}.  By default C{revision -
        1}, for a store that numbers its changes one by one.
    """

    change: Change
    revision: int
    gap: bool = False
    previous: int = field(default=Factory(lambda event: event.revision - 1, takes_self=True))


@frozen
class Health:
    """
    Whether a node serves reads and writes, for C{GET /health}.

    @ivar problem: why it does not, as a short code (C{no_majority},
        C{no_leader}, C{leader_unreachable}, C{no_map},
        C{partitions_unserved}), or C{None} when it does.
    @ivar message: the problem in words ("" when there is none).
    @ivar details: what the decision was made from, as JSON fields.
    """

    problem: Optional[str]
    message: str
    details: dict


class IKeyValue(Interface):
    """
    Linearizable single-key operations on the whole store.

    Every method returns a Deferred.  Failures are the typed exceptions of
    L{twisted_kv.errors}: L{Unavailable} means nothing was applied,
    L{OutcomeUnknown} means the write may or may not take effect.
    """

    max_value_bytes: int = Attribute("Largest value accepted, in bytes.")

    def get(key: str):
        """
        Read C{key}.

        @return: a Deferred firing with a L{ReadResult}.
        """

    def put(
        key: str,
        value: bytes,
        content_type: str = "application/octet-stream",
        ttl: Optional[float] = None,
        if_match: Optional[str] = None,
        if_none_match: bool = False,
        create_only: bool = False,
    ):
        """
        Store C{value} under C{key} (see L{twisted_kv.core.records.Put}).

        @return: a Deferred firing with a L{WriteResult}, or failing with
            L{KeyExists}, L{PreconditionFailed}, L{ValueTooLarge},
            L{InsufficientStorage}, L{Unavailable} or L{OutcomeUnknown}.
        """

    def delete(key: str, if_match: Optional[str] = None):
        """
        Remove C{key}.

        @return: a Deferred firing with the version string of the deletion, or
            failing with L{KeyNotFound}, L{PreconditionFailed},
            L{Unavailable} or L{OutcomeUnknown}.
        """

    def list_keys(prefix: str, start_after: Optional[str], limit: int):
        """
        List live keys starting with C{prefix}, after C{start_after}, in key
        order, at most C{limit} of them.

        @return: a Deferred firing with a L{KeyPage}.
        """

    def subscribe(listener: Callable[[ChangeEvent], None]) -> None:
        """
        Call C{listener} with every change committed anywhere in the store,
        in revision order, from now on.
        """

    def unsubscribe(listener: Callable[[ChangeEvent], None]) -> None:
        """
        Stop calling C{listener}.
        """

    def replay(after: int):
        """
        The changes after revision C{after}, oldest first, up to the last
        one delivered to listeners when the Deferred fires; call it only
        while subscribed.

        @return: a Deferred firing with C{(changes, newest)}: the
            L{ChangeEvent}s, or C{None} when some change after C{after} is no
            longer held (or may be shown twice: the caller must re-read);
            and the revision after which listeners get every change, or
            C{None} when not known yet.
        """


class ISnapshotSource(Interface):
    """
    Backups of a whole store, a partition at a time: each partition's dump
    is taken by its primary at one moment and fetched a page at a time
    (C{/admin/snapshot}, C{kvctl snapshot save}), and the writing of a
    backup's records back (C{/admin/restore}, C{kvctl snapshot restore}).
    """

    def partition_count() -> int:
        """
        How many partitions the store has (numbered from 0).
        """

    def dump_page(partition: int, dump_id: Optional[str], after: Optional[str], limit: int):
        """
        A page of C{partition}'s dump: a new dump, as of the moment it is
        asked for, when C{dump_id} is C{None} (every write acknowledged
        before is in it); else the records of dump C{dump_id} after key
        C{after}.  Every namespace of store keys is included.

        @return: a Deferred firing with a L{twisted_kv.core.backup.DumpPage}
            of at most C{limit} records, or failing with L{Unavailable} or
            L{SnapshotExpired} (the dump is no longer held: start the
            partition again).
        """

    def restore(records: Sequence[BackupRecord], batch_id: Optional[str] = None):
        """
        Write C{records} (L{twisted_kv.core.backup.BackupRecord}s of
        distinct keys), each as an unconditional write of its value,
        content type and time to live (which must be positive), replicated
        and acknowledged like any write; in no particular order.

        @param batch_id: names the batch: the same batch written again under
            the same id (its answer lost, or refused) writes each record
            that was already written no second time.  Without it, the
            records are new writes.
        @return: a Deferred firing with how many records were written,
            once all of them are, or failing with the first error (the
            others are done by then: written or not).
        """


class IClusterStatus(Interface):
    """
    What a node knows about itself and the cluster, for C{/cluster},
    C{/health}, C{/metrics} and the dashboard.
    """

    def cluster_view() -> dict:
        """
        The JSON object of C{GET /cluster}: C{self}, C{leader}, C{term},
        C{nodes} and C{summary}.

        C{nodes} is a list of objects with C{id}, C{state}
        (C{alive}/C{suspect}/C{dead}), C{http}, C{primaries} (how many partitions
        it is the primary of in this node's map), C{keys} (the client keys the
        node holds a copy of), C{file_records} (the records of files it
        holds a copy of: chunks, manifests, directories), C{synced} (it
        holds in sync every partition placed on it), C{executed} (the client
        requests it executed as a partition's primary, whichever node
        received them) and C{silent_for} (seconds since this node last
        heard from it), as the node last reported them; a dead node's key
        counts are C{None} and it is not C{synced}.

        C{summary} counts the nodes C{alive}, C{suspect}, C{dead} and
        C{in_sync}, says how many more C{can_lose}, and says it all in
        C{text}, e.g. "2 of 3 alive: can lose 0 more".
        """

    def health() -> Health:
        """
        Whether this node serves reads and writes, and if not, why
        (C{GET /health}).
        """

    def members_view() -> dict:
        """
        The JSON object of C{GET /cluster/nodes}: C{members}, each with the
        L{twisted_kv.core.roster.NODE_FIELDS}, C{role} (C{member},
        C{joining} or C{leaving}), C{voter} and C{primaries} (as in
        L{cluster_view}); C{change}, the change in
        progress (C{{"kind", "node"}}) or C{null}; C{moving_partitions},
        the partitions not yet where the placement wants them.
        """

    def change_members(kind: str, node: Any) -> "Deferred[dict]":
        """
        Ask the cluster to add a member (C{kind} C{add}, C{node} its
        fields) or remove one (C{remove}, C{node} its id); fires with
        L{members_view} once the change is committed (the data then moves),
        or fails with a L{twisted_kv.errors.KVError} saying why not.
        """

    def metrics() -> list:
        """
        Node-level metrics, read when C{/metrics} is scraped: a list of
        C{prometheus_client} metric families (L{twisted_kv.web.metrics.Metric}).
        """


class IMessenger(Interface):
    """
    What a node needs from its links to its peers: L{twisted_kv.peer.links.PeerLinks}
    on real sockets, L{twisted_kv.testing.MemoryNetwork}'s messengers in
    the tests.
    """

    def send(peer_id: str, message: list) -> bool:
        """
        Queue C{message} for C{peer_id}; messages to one peer arrive in send
        order while the link lives.

        @return: C{True} if queued; C{False} (the message dropped) if there
            is no link to that peer right now.
        """

    def hears_from(peer_id: str) -> bool:
        """
        Whether C{peer_id} has a link to us, on which its answers to our
        requests would arrive (a peer that just restarted, or is redialling
        us, may not have one yet).
        """

    def connected() -> set[str]:
        """
        The ids of the peers we have a link to.
        """

    def set_peers(peers: dict[str, tuple[str, int]]) -> None:
        """
        Link to C{peers} (id -> (host, peer port)) from now on: the
        cluster's membership changed.
        """


class IPeerHandler(Interface):
    """
    What the links to the peers call on the node (L{twisted_kv.cluster.node.Node}).
    """

    def peer_message(peer_id: str, incarnation: int, message: list) -> None:
        """
        C{peer_id}, in incarnation C{incarnation}, sent C{message}.
        """

    def peer_up(peer_id: str, incarnation: int) -> None:
        """
        Our link to C{peer_id} (incarnation C{incarnation}) is up: what was
        in flight on an older one may be lost.
        """

    def peer_down(peer_id: str) -> None:
        """
        Our link to C{peer_id} is lost: requests awaiting its answers fail.
        """
