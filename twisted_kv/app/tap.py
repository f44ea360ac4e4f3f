# -*- test-case-name: tests.test_tap -*-
"""
The C{kvnode} twistd plugin's options and service maker.

    twistd -n --pidfile= kvnode --config etc/cluster-local.ini --node n1

A user error in the cluster file (or an unknown C{--node}) ends twistd at
once with one line on standard error naming the file, the section and the
key, and a non-zero exit status; no traceback.  So does a port the node
cannot listen on, naming the node, the address and the key.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.application.service import IService
from twisted.python import usage

from twisted_kv.core.config import ClusterConfig, ConfigError, load_config, override_node

#: Builds a node's service tree: (config, node id, reactor) -> service.
ServiceBuilder = Callable[[ClusterConfig, str, Any], IService]


class Options(usage.Options):
    """
    Command-line options of C{twistd kvnode}.
    """

    synopsis = "--config PATH --node ID [--ftp-passive-address IP] [--ftp-passive-ports LOW-HIGH]"

    longdesc = (
        "Run node ID of the twisted_kv cluster described in the INI file PATH "
        "(see README.md for its keys). Every node of a cluster is started with "
        "the same file."
    )

    optParameters = [
        ["config", "c", None, "The cluster file (INI) describing every node."],
        ["node", "n", None, "The id of this node: its [node:ID] section in the file."],
        [
            "ftp-passive-address", None, None,
            "The IPv4 address FTP's PASV announces (overrides the node's ftp_passive_address).",
        ],
        [
            "ftp-passive-ports", None, None,
            "The ports of passive FTP data connections, LOW-HIGH"
            " (overrides the node's ftp_passive_ports).",
        ],
    ]

    #: The options that override the node's keys of the same name.
    node_overrides = ("ftp_passive_address", "ftp_passive_ports")

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        """
        Parse the command line; a usage error ends the program with one line
        naming the command as the user knows it.  (twistd itself would print
        this usage, then name the command by its own path and first
        argument: C{/usr/bin/twistd -n: ...}.)

        @raise SystemExit: with that line, on a usage error.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            command = "twistd kvnode"
            message = str(error).rstrip(".")
            raise SystemExit(f"{command}: {message}; see {command} --help") from None

    def postOptions(self) -> None:
        """
        Both options are required.

        @raise usage.UsageError: if one is missing or empty.
        """
        for name, meaning in (
            ("config", "the cluster file"),
            ("node", "this node's id in the cluster file"),
        ):
            if not self[name]:
                raise usage.UsageError(f"--{name} is required ({meaning})")


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
        L{twisted_kv.app.service.build_node_service}.

    @return: the node's (not yet started) service.

    @raise SystemExit: with the one-line L{ConfigError} text when the cluster
        file or the node id is unusable, or with one line naming a port the
        node cannot listen on (checked only with the default builder);
        Python prints it to standard error and exits with status 1.
    """
    if reactor is None:
        from twisted.internet import reactor as _global_reactor

        reactor = _global_reactor
    try:
        config = load_config(options["config"])
        overrides = {
            key: options[key.replace("_", "-")]
            for key in Options.node_overrides
            if options[key.replace("_", "-")] is not None
        }
        config = override_node(config, options["node"], overrides)
        if _build is None:
            from twisted_kv.app.service import build_node_service, check_ports

            check_ports(config.node(options["node"]))
            _build = build_node_service
        return _build(config, options["node"], reactor)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
