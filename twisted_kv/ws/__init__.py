"""
The WebSocket edge of a node: the change feed served on C{/ws}.
"""
