# -*- test-case-name: tests.test_peer_links -*-
"""
The cluster-internal peer transport, which serves only peers that prove
knowledge of the cluster secret (see docs/peer-protocol.md).

L{PeerLinks} is all the node layer uses: it keeps one authenticated
outbound connection to every peer, accepts the peers' inbound connections
and reports messages and link changes to the node's handler. The wire
protocol itself is described in L{twisted_kv.peer.protocol}.
"""

from twisted_kv.peer.links import PeerLinks
from twisted_kv.peer.protocol import MessageTooLarge

__all__ = ["MessageTooLarge", "PeerLinks"]
