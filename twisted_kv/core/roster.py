# -*- test-case-name: tests.test_roster -*-
"""
The cluster's membership and the rules for changing it.

The nodes of the cluster file are the first members; afterwards the
membership is a L{Roster} carried in every L{ClusterMap
<twisted_kv.core.placement.ClusterMap>}, so it lives in the consensus state
(replicated, and persisted with C{data_dir}) with the partitions' placement.

A change is one node at a time, in steps that each change the voters by at
most one node (Raft's single-server changes, Ongaro 2014, §4.1 of his
thesis), one change at a time:

  - add C{X}: C{X} joins as a I{learner} (it receives the map but neither
    votes nor holds data: the voters are unchanged); once the leader hears
    from C{X}, C{X} becomes a voter and is placed on the ring (the voters
    grow by one), the partitions it is given are filled, and once no
    partition is still moving the change is done;
  - remove C{X}: C{X} is taken off the ring at once (the voters are
    unchanged), so its copies move to the others; once it holds no copy
    (at once if it is dead: plan drops dead members), C{X} leaves the
    roster (the voters shrink by one) and the change is done.

The steps are decided by the elected leader (L{advance}); the front ends
only ask for a change (L{request_add}, L{request_remove}).
"""

from __future__ import annotations

from typing import Optional

from attrs import evolve, field, frozen

from twisted_kv.core.config import HOST_PATTERN, NODE_ID_PATTERN, ClusterConfig, NodeConfig
from twisted_kv.errors import InvalidRequest, MembershipConflict, UnknownMember

ADD = "add"
REMOVE = "remove"

MIN_MEMBERS = 3
"""
Fewer voters than this tolerate no failure at all: removals stop here.
"""


@frozen
class Change:
    """
    The membership change in progress.

    @ivar kind: L{ADD} or L{REMOVE}.
    @ivar node_id: the node added or removed.
    @ivar voting: for an add, whether the node was made a voter yet.
    """

    kind: str
    node_id: str
    voting: bool = False


@frozen
class Roster:
    """
    The members of the cluster, with their addresses, and the change in
    progress, if any.

    @ivar nodes: every member, learner included, in the order they joined.
    """

    nodes: tuple[NodeConfig, ...] = field(converter=tuple)
    change: Optional[Change] = None

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(node.node_id for node in self.nodes)

    @property
    def learner(self) -> Optional[str]:
        """
        The node added but not yet voting, if any.
        """
        change = self.change
        if change is not None and change.kind == ADD and not change.voting:
            return change.node_id
        return None

    @property
    def leaving(self) -> Optional[str]:
        """
        The node being removed, if any.
        """
        change = self.change
        return change.node_id if change is not None and change.kind == REMOVE else None

    @property
    def joining(self) -> Optional[str]:
        """
        The node being added, if any (learner or already voting).
        """
        change = self.change
        return change.node_id if change is not None and change.kind == ADD else None

    @property
    def voters(self) -> tuple[str, ...]:
        """
        The members whose votes (and map acknowledgements) count.
        """
        return tuple(node for node in self.ids if node != self.learner)

    @property
    def placed(self) -> tuple[str, ...]:
        """
        The members the ring places partitions on: the voters but one
        being removed.
        """
        return tuple(node for node in self.voters if node != self.leaving)

    def node(self, node_id: str) -> Optional[NodeConfig]:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        return None

    def role(self, node_id: str) -> str:
        """
        C{member}, C{joining} or C{leaving}: what C{/cluster} shows.
        """
        if node_id == self.joining:
            return "joining"
        if node_id == self.leaving:
            return "leaving"
        return "member"


NODE_FIELDS = ("id", "host", "http_port", "peer_port", "ftp_port")
"""
What names a node to add, in C{POST /cluster/nodes} and the peer message.
"""


def node_from_fields(fields: object) -> NodeConfig:
    """
    The node C{fields} (a mapping of L{NODE_FIELDS}) describe.

    @raise InvalidRequest: a field is missing, unknown or malformed.
    """
    if not isinstance(fields, dict):
        raise InvalidRequest(f"a node is an object with {', '.join(NODE_FIELDS)}")
    missing = [name for name in NODE_FIELDS if name not in fields]
    unknown = sorted(set(fields) - set(NODE_FIELDS))
    if missing or unknown:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
        raise InvalidRequest(f"a node has exactly {', '.join(NODE_FIELDS)}: {problem}")
    node_id, host = fields["id"], fields["host"]
    if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
        raise InvalidRequest(f"id {node_id!r}: letters, digits, '_', '.' and '-' only")
    if not isinstance(host, str) or not HOST_PATTERN.match(host):
        raise InvalidRequest(f"host {host!r} is not a host name or address")
    ports = {}
    for name in NODE_FIELDS[2:]:
        port = fields[name]
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise InvalidRequest(f"{name} {port!r} is not a port (1 to 65535)")
        ports[name] = port
    return NodeConfig(node_id=node_id, host=host, **ports)


def node_fields(node: NodeConfig) -> dict:
    """
    The L{NODE_FIELDS} of C{node}.
    """
    return {
        "id": node.node_id, "host": node.host, "http_port": node.http_port,
        "peer_port": node.peer_port, "ftp_port": node.ftp_port,
    }


def describe(roster: Roster) -> dict:
    """
    C{roster} as C{GET /cluster/nodes} shows it: C{members}, each with its
    L{NODE_FIELDS}, C{role} and C{voter}, and the C{change} in progress
    (C{{"kind", "node"}}) or C{None}.
    """
    change = roster.change
    return {
        "members": [
            {**node_fields(n), "role": roster.role(n.node_id), "voter": n.node_id in roster.voters}
            for n in roster.nodes
        ],
        "change": None if change is None else {"kind": change.kind, "node": change.node_id},
    }


def from_description(view: dict) -> Roster:
    """
    The roster L{describe} gave C{view} for (as a joining node fetches it).

    @raise InvalidRequest: C{view} is not such a description.
    """
    try:
        members, change = view["members"], view["change"]
        nodes = [
            node_from_fields({name: member[name] for name in NODE_FIELDS}) for member in members
        ]
        voters = {member["id"] for member in members if member["voter"]}
        if change is not None:
            kind, node_id = change["kind"], change["node"]
            change = Change(kind, node_id, kind == ADD and node_id in voters)
    except (KeyError, TypeError) as error:
        raise InvalidRequest(f"not a membership: {error}") from None
    return Roster(nodes, change)


def first_roster(config: ClusterConfig) -> Roster:
    """
    The membership a cluster starts with: the nodes of its file.
    """
    return Roster(config.nodes)


def replicas_for(roster: Roster, base: ClusterConfig) -> int:
    """
    How many copies each partition has under C{roster}: a majority of the
    voters with C{replicas = majority}, else the number the file gives.
    """
    if base.majority_replicas:
        return len(roster.voters) // 2 + 1
    return base.replicas


def config_for(base: ClusterConfig, roster: Roster) -> ClusterConfig:
    """
    C{base} (the cluster file's settings) with C{roster}'s nodes as the
    nodes (reached over TLS if the file has C{[tls]}), and the copy count
    that follows from them.
    """
    nodes = tuple(evolve(node, tls=base.tls is not None) for node in roster.nodes)
    return evolve(base, nodes=nodes, replicas=replicas_for(roster, base))


def _no_change_in_progress(roster: Roster) -> None:
    if roster.change is not None:
        change = roster.change
        verb = "adding" if change.kind == ADD else "removing"
        raise MembershipConflict(
            f"a membership change is in progress ({verb} {change.node_id}): one at a time"
        )


def request_add(roster: Roster, node: NodeConfig) -> Roster:
    """
    C{roster} with C{node} added as a learner.

    @raise MembershipConflict: a change is in progress, or the id is taken.
    @raise InvalidRequest: an address of C{node} is one a member uses.
    """
    _no_change_in_progress(roster)
    if roster.node(node.node_id) is not None:
        raise MembershipConflict(f"{node.node_id} is already a member")
    wanted = {node.http_port, node.peer_port, node.ftp_port}
    if len(wanted) < 3:
        raise InvalidRequest("the node's three ports must differ")
    for member in roster.nodes:
        if member.host == node.host and wanted & {member.http_port, member.peer_port, member.ftp_port}:
            raise InvalidRequest(
                f"a port of {node.node_id} at {node.host} is already used by {member.node_id}"
            )
    return Roster((*roster.nodes, node), Change(ADD, node.node_id))


def request_remove(roster: Roster, node_id: str, base: ClusterConfig) -> Roster:
    """
    C{roster} with C{node_id} leaving.  Removing the node being added cancels
    that addition (it is then removed as any member is).

    @raise UnknownMember: C{node_id} is not a member.
    @raise MembershipConflict: another change is in progress, or fewer than
        L{MIN_MEMBERS} members (or the configured copies) would remain.
    """
    if roster.node(node_id) is None:
        raise UnknownMember(f"{node_id} is not a member")
    if roster.joining == node_id:
        if roster.learner == node_id:
            # It never voted nor held data: it goes at once.
            return Roster(n for n in roster.nodes if n.node_id != node_id)
        return evolve(roster, change=Change(REMOVE, node_id))
    _no_change_in_progress(roster)
    remaining = len(roster.voters) - 1
    if remaining < MIN_MEMBERS:
        raise MembershipConflict(
            f"removing {node_id} would leave {remaining} members; at least {MIN_MEMBERS} are needed"
        )
    if not base.majority_replicas and remaining < base.replicas:
        raise MembershipConflict(
            f"removing {node_id} would leave fewer members than replicas = {base.replicas}"
        )
    return evolve(roster, change=Change(REMOVE, node_id))


def advance(roster: Roster, live: frozenset[str], moving: int, holds_copies: bool) -> Roster:
    """
    The next step of the change in progress, as the leader decides it.

    @param live: the nodes the leader hears from.
    @param moving: how many partitions are not yet placed as the ring
        wants them (members missing, not in sync, or surplus).
    @param holds_copies: whether the node being removed is still a member
        of some partition.
    """
    change = roster.change
    if change is None:
        return roster
    if change.kind == ADD:
        if not change.voting:
            return evolve(roster, change=Change(ADD, change.node_id, True)) if change.node_id in live else roster
        return Roster(roster.nodes) if moving == 0 else roster
    if holds_copies:
        return roster
    return Roster(n for n in roster.nodes if n.node_id != change.node_id)


def encode_roster(roster: Roster) -> list:
    """
    A msgpack-friendly form of C{roster}.
    """
    change = roster.change
    return [
        [[n.node_id, n.host, n.http_port, n.peer_port, n.ftp_port] for n in roster.nodes],
        None if change is None else [change.kind, change.node_id, change.voting],
    ]


def decode_roster(data: list) -> Roster:
    nodes, change = data
    return Roster(
        (
            NodeConfig(node_id=node_id, host=host, http_port=http, peer_port=peer, ftp_port=ftp)
            for node_id, host, http, peer, ftp in nodes
        ),
        None if change is None else Change(*change),
    )
