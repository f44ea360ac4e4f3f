"""
The HTTP edge of a node: the site, the key-value and files APIs, the
dashboard and /metrics.
"""
