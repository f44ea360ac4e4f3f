# -*- test-case-name: tests.test_tap -*-
"""
The C{kvnode} twistd plugin's options and service maker.

    twistd -n --pidfile= kvnode --config etc/cluster-local.ini --node n1
    twistd -n --pidfile= kvnode --config join.ini --node n4 --join http://10.0.0.1:7001

With C{--join URL}, the node was added to a running cluster (C{kvctl member
add}): the file needs only C{[cluster]}, and the members, this node's
address among them, come from the cluster at C{URL} (any member).

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
from twisted_kv.core.roster import Roster, config_for, from_description
from twisted_kv.errors import KVError

#: Builds a node's service tree: (config, node id, reactor, membership
#: fetched with --join or None) -> service.
ServiceBuilder = Callable[[ClusterConfig, str, Any, Optional[Roster]], IService]


class Options(usage.Options):
    """
    Command-line options of C{twistd kvnode}.
    """

    synopsis = (
        "--config PATH --node ID [--join URL]"
        " [--ftp-passive-address IP] [--ftp-passive-ports LOW-HIGH]"
    )

    longdesc = (
        "Run node ID of the twisted_kv cluster described in the INI file PATH "
        "(see README.md for its keys). Every node of a cluster is started with "
        "the same file."
    )

    optParameters = [
        ["config", "c", None, "The cluster file (INI) describing every node."],
        ["node", "n", None, "The id of this node: its [node:ID] section in the file."],
        [
            "join", "j", None,
            "A member's URL: this node was added to that running cluster (kvctl member add);"
            " the file then needs only [cluster], the members come from the cluster.",
        ],
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
        roster = None
        if options["join"]:
            config = load_config(options["config"], joining=True)
            roster = fetch_membership(options["join"], options["node"], config.request_timeout)
            config = config_for(config, roster)
        else:
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
        return _build(config, options["node"], reactor, roster)
    except ConfigError as e:
        raise SystemExit(str(e)) from None


def fetch_membership(url: str, node_id: str, timeout: float) -> Roster:
    """
    The membership of the cluster at C{url}, which must name C{node_id}.

    @raise SystemExit: with one line saying why it cannot be had.
    """
    from twisted_kv.client import Client

    try:
        with Client(url, timeout=timeout) as client:
            roster = from_description(client.members())
    except (KVError, OSError, ValueError) as error:
        message = getattr(error, "message", None) or getattr(error, "strerror", None) or str(error)
        raise SystemExit(f"kvnode {node_id}: cannot join through {url}: {message}") from None
    if roster.node(node_id) is None:
        raise SystemExit(
            f"kvnode {node_id}: not a member of the cluster at {url}: add it first"
            f" (kvctl member add {node_id} ...)"
        )
    return roster
