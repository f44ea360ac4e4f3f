# -*- test-case-name: tests.test_records,tests.test_memstore,tests.test_placement,tests.test_replica,tests.test_storage_snapshot -*-
"""
Hypothesis strategies for the pure core, kept in one place.

Text that travels through the peer codec excludes lone surrogates (msgpack
only carries valid UTF-8); keys that are only hashed or compared may hold
any code point.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

from twisted_kv.core.placement import ClusterMap, Member, PartitionConfig
from twisted_kv.core.records import Change, Record
from twisted_kv.core.replica import Entry

SEQ_LIMIT = 2**40

# Epochs and log positions as the replication layer produces them.
epochs = st.integers(min_value=0, max_value=2**22)
seqs = st.integers(min_value=0, max_value=SEQ_LIMIT - 1)

# Text the codec can carry (no lone surrogates).
wire_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=24
)

# Keys for store-order tests: a small alphabet (with a slash and a
# multi-byte letter) so that prefixes and neighbours collide often.
ordered_keys = st.text(alphabet="ab/\u00e9", max_size=5)
key_sets = st.sets(ordered_keys, max_size=25)

values = st.binary(max_size=48)
content_types = st.sampled_from(
    ["application/octet-stream", "text/plain; charset=utf-8", "application/json"]
) | wire_text
expiries = st.none() | st.floats(
    min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False
)


@st.composite
def changes(draw: st.DrawFn) -> Change:
    """
    A L{Change} as L{twisted_kv.core.records.decide} makes them: a put's
    record carries the change's version; only puts say C{created}.
    """
    kind = draw(st.sampled_from(["put", "delete", "expire"]))
    key = draw(wire_text)
    version = draw(st.integers(min_value=0, max_value=2**63 - 1))
    if kind != "put":
        return Change(kind, key, version, None)
    record = Record(draw(values), draw(content_types), version, draw(expiries))
    return Change("put", key, version, record, draw(st.booleans()))


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    """
    A replication log entry, with or without a client operation id.
    """
    return Entry(
        draw(epochs),
        draw(st.integers(min_value=1, max_value=SEQ_LIMIT - 1)),
        draw(changes()),
        draw(st.none() | wire_text),
    )


# Node ids: short, distinct, the characters a cluster file allows.
node_ids = st.text(
    alphabet=string.ascii_lowercase + string.digits + "-", min_size=1, max_size=10
)
node_sets = st.sets(node_ids, min_size=2, max_size=8)


@st.composite
def node_sets_and_newcomer(draw: st.DrawFn) -> tuple[list[str], str]:
    """
    A set of node ids and one more id not in it.
    """
    nodes = sorted(draw(node_sets))
    newcomer = draw(node_ids.filter(lambda node: node not in nodes))
    return nodes, newcomer


@st.composite
def partition_configs(draw: st.DrawFn) -> PartitionConfig:
    """
    A partition configuration: distinct members, an in-sync subset.
    """
    ids = draw(st.lists(node_ids, min_size=1, max_size=5, unique=True))
    members = [
        Member(node, draw(st.integers(min_value=0, max_value=2**63 - 1)))
        for node in ids
    ]
    in_sync = draw(st.sets(st.sampled_from(ids)))
    return PartitionConfig(draw(st.integers(min_value=1, max_value=2**40)), members, in_sync)


cluster_maps = st.lists(partition_configs(), min_size=1, max_size=6).map(ClusterMap)


@st.composite
def failure_histories(draw: st.DrawFn) -> tuple[int, list[tuple]]:
    """
    A cluster size and a history of events for the placement planner.

    Events: C{("kill", node)}, C{("restart", node)} (a node, dead or alive,
    comes back as a new, empty incarnation), C{("sync", partition, i)} (the
    primary finished copying the partition to its member number C{i}),
    C{("drop", partition, i)} (the primary reports member C{i} as not
    answering) and C{("write", partition)} (a client write is attempted).
    Whether a kill is allowed (at most half the nodes down) is left to the
    test, which knows the state.
    """
    size = draw(st.integers(min_value=3, max_value=6))
    event = st.one_of(
        st.tuples(st.just("kill"), st.integers(0, size - 1)),
        st.tuples(st.just("restart"), st.integers(0, size - 1)),
        st.tuples(st.just("sync"), st.integers(0, 7), st.integers(0, 7)),
        st.tuples(st.just("drop"), st.integers(0, 7), st.integers(0, 7)),
        st.tuples(st.just("write"), st.integers(0, 7)),
    )
    return size, draw(st.lists(event, max_size=60))


# (type, payload) records as the storage layer's log and snapshots hold them.
storage_records = st.lists(
    st.tuples(st.integers(min_value=0, max_value=255), st.binary(max_size=40)), max_size=30
)
