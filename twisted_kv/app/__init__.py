"""
Running a node and a cluster: the twistd service and plugin options, the
local launcher (C{kvcluster}) and the command-line client (C{kvctl}).
"""
