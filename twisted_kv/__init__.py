"""
twisted_kv: a replicated, partitioned in-memory key-value store on Twisted.

Layers, with one-way imports: front ends (HTTP, WebSocket, FTP, twistd) use the
node layer (peer protocol, replication, coordination), which uses the pure
core (placement, versions, consensus rules) that touches no reactor.
"""

__version__ = "0.1.0"
