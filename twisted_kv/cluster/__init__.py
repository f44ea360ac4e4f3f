"""
The node layer: a node's state machine and its parts, the coordinator that
answers client operations for the whole cluster, and their request deadlines.
"""
