# -*- test-case-name: tests.test_tap -*-
"""
The C{kvnode} twistd plugin's options and service maker.

    twistd -n --pidfile= kvnode --config etc/cluster-local.ini --node n1

A user error in the cluster file (or an unknown C{--node}) ends twistd at
once with one line on standard error naming the file, the section and the
key, and a non-zero exit status; no traceback.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.application.service import IService
from twisted.python import usage

from twisted_kv.core.config import ClusterConfig, ConfigError, load_config

#: Builds a node's service tree: (config, node id, reactor) -> service.
ServiceBuilder = Callable[[ClusterConfig, str, Any], IService]


class Options(usage.Options):
    """
    Command-line options of C{twistd kvnode}.
    """

    synopsis = "--config PATH --node ID"

    longdesc = (
        "Run node ID of the twisted_kv cluster described in the INI file PATH "
        "(see README.md for its keys). Every node of a cluster is started with "
        "the same file."
    )

    optParameters = [
        ["config", "c", None, "The cluster file (INI) describing every node."],
        ["node", "n", None, "The id of this node: its [node:ID] section in the file."],
    ]

    def postOptions(self) -> None:
        """
        Both options are required.

        @raise usage.UsageError: if one is missing or empty.
        """
        for name in ("config", "node"):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required")


def makeService(
    options: Options,
    reactor: Optional[Any] = None,
    *,
    _build: Optional[ServiceBuilder] = None,
) -> IService:
    """
    Load the cluster file and build the chosen node's service.

    @param options: parsed L{Options}.
    @param reactor: the reactor the node runs on; the global one by default.
    @param _build: the service builder, for tests; by default
        L{twisted_kv.service.build_node_service}.

    @return: the node's (not yet started) service.

    @raise SystemExit: with the one-line L{ConfigError} text when the cluster
        file or the node id is unusable; Python prints it to standard error
        and exits with status 1.
    """
    if reactor is None:
        from twisted.internet import reactor as _global_reactor

        reactor = _global_reactor
    try:
        config = load_config(options["config"])
        config.node(options["node"])
        if _build is None:
            from twisted_kv.service import build_node_service

            _build = build_node_service
        return _build(config, options["node"], reactor)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
