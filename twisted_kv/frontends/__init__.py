"""
The edges of a node: HTTP API, WebSocket, dashboard and FTP front ends.
"""
