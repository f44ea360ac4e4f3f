"""
The FTP edge of a node: Twisted's FTP server over the cluster's files.
"""
