# -*- test-case-name: tests.test_storage_log,tests.test_storage_committer -*-
"""
Durable storage for a node's data directory: an append-only log of
checksummed records (L{log}), snapshot files (L{snapshot}), group commit off
the reactor thread (L{committer}), all over a small file-system interface
(L{fs}) that tests replace with one that crashes (L{testing}).
"""
