"""
Clients of a cluster: a synchronous one and a Twisted one.
"""
