# -*- test-case-name: tests.test_config -*-
"""
The cluster file: one INI file describing every node of a cluster.

    [cluster]
    name = demo
    secret = a-long-random-string     ; authenticates peers to each other
    replicas = majority               ; "majority" (default) or 1..N
    data_dir =                        ; optional; empty = purely in memory
    fsync = always                    ; always (default), everysec or never
    election_timeout = 2s             ; any tunable of L{CLUSTER_KEYS}

    [node:n1]
    host = 127.0.0.1
    http_port = 7001                  ; HTTP API, WebSocket (/ws), dashboard
    peer_port = 7101                  ; cluster-internal protocol
    ftp_port = 7201                   ; FTP
    bind = 0.0.0.0                    ; optional: listen here, reached at host
    ftp_passive_address = 203.0.113.7 ; optional: announced by PASV (NAT)
    ftp_passive_ports = 30000-30009   ; optional: passive data ports

    [ftp_users]
    alice = plain:wonderland

    [tls]                             ; optional: TLS on every port
    ca = certs/ca.pem                 ; signs every node's certificate
    cert = certs/{node}.pem           ; {node} = the node id
    key = certs/{node}.key
    [user:bob]                        ; see twisted_kv.core.users
    password = plain:builder
    read = *
    write = bob/
    files = /bob/
    admin = no

Full-line and inline comments (C{;} or C{#}; inline ones after whitespace)
are allowed.  Unknown sections and unknown keys are errors, so that a typo
never silently changes behaviour.  Every problem is reported as a
L{ConfigError} whose text is one line naming the file, the section and the
key.

This module is pure: it reads text and builds frozen values; it never
touches a reactor.  FTP password specs are checked with
L{twisted_kv.core.passwords.check_stored}, pure as well.
"""

from __future__ import annotations

import ast
import configparser
import ipaddress
import math
import os.path
import re
from typing import Any, Callable, Optional

from attrs import evolve, field, frozen, validators

from twisted_kv.core.passwords import check_stored
from twisted_kv.core.users import Grant, User, parse_files_root, parse_prefixes

__all__ = [
    "CLUSTER_KEYS",
    "FSYNC_POLICIES",
    "HOST_PATTERN",
    "NODE_ID_PATTERN",
    "NODE_KEYS",
    "OPTIONAL_NODE_KEYS",
    "USER_KEYS",
    "ClusterConfig",
    "ConfigError",
    "NodeConfig",
    "TLS_KEYS",
    "TLSConfig",
    "format_address",
    "load_config",
    "override_node",
    "parse_bool",
    "parse_config",
    "parse_duration",
    "parse_port_range",
    "parse_size",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: When a write counts as durable: the values of C{fsync} (see
#: L{twisted_kv.storage.committer}).
FSYNC_POLICIES = ("always", "everysec", "never")
TiB = 1024 * GiB


class ConfigError(ValueError):
    """
    The cluster file (or the node chosen from it) is unusable.

    C{str()} of it is a single line such as
    C{etc/x.ini: [node:n2] http_port: duplicate port 7001 (also [node:n1] http_port)}.

    @ivar path: the file.
    @ivar section: the section name without brackets, or C{None}.
    @ivar key: the key (or command-line option, such as C{--node}), or C{None}.
    @ivar problem: what is wrong, in words.
    """

    def __init__(
        self,
        path: str,
        section: Optional[str],
        key: Optional[str],
        problem: str,
    ) -> None:
        super().__init__(path, section, key, problem)
        self.path = path
        self.section = section
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        where = [self.path + ":"]
        if self.section is not None:
            where.append(f"[{self.section}]")
        if self.key is not None:
            where.append(self.key)
        if len(where) > 1:
            where[-1] += ":"
        text = " ".join(where + [self.problem])
        # Never more than one line, whatever the file contained.
        return " ".join(text.split("\n"))


# --------------------------------------------------------------------------
# Value syntax


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")

# Single letters and IEC units are binary; two-letter SI units are decimal.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kib": KiB,
    "kb": 1000,
    "m": MiB,
    "mib": MiB,
    "mb": 1000**2,
    "g": GiB,
    "gib": GiB,
    "gb": 1000**3,
    "t": TiB,
    "tib": TiB,
    "tb": 1000**4,
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*$")

_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off"}


def parse_size(text: str) -> int:
    """
    Parse a byte count: C{100000}, C{10k}, C{64M}, C{512MiB}, C{1.5G},
    C{2GiB}, C{500MB}.

    Units are case-insensitive.  C{k}, C{M}, C{G}, C{T} and C{KiB}, C{MiB},
    C{GiB}, C{TiB} are powers of 1024; C{kB}, C{MB}, C{GB}, C{TB} are powers
    of 1000; C{B} or no unit means bytes.  Fractions are rounded down.

    @raise ValueError: if C{text} is not such a size.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (try 100000, 64MiB, 2GiB)")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"unknown size unit {unit!r} in {text!r} (use k, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
        )
    if "." in number:
        return int(float(number) * factor)
    return int(number) * factor


def parse_duration(text: str) -> float:
    """
    Parse a duration in seconds: C{2}, C{0.5}, C{1.5s}, C{250ms}.

    @raise ValueError: if C{text} is not such a duration.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (try 2, 1.5s, 250ms)")
    number, unit = match.groups()
    seconds = float(number)
    if unit == "ms":
        seconds /= 1000.0
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {text!r}")
    return seconds


def parse_bool(text: str) -> bool:
    """
    Parse C{true}/C{false}, C{yes}/C{no}, C{on}/C{off} or C{1}/C{0}.

    @raise ValueError: for anything else.
    """
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def _parse_int(text: str) -> int:
    stripped = text.strip()
    if not re.fullmatch(r"[+-]?\d+", stripped):
        raise ValueError(f"not an integer: {text!r}")
    return int(stripped)


def parse_port_range(text: str) -> tuple[int, int]:
    """
    Parse an inclusive range of TCP ports, C{30000-30009}, or one port.

    @raise ValueError: if C{text} is not such a range.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if match is None:
        raise ValueError(f"not a port range: {text!r} (try 30000-30009)")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{text.strip()!r} is not a range of ports from 1 to 65535, low to high")
    return low, high


def _format_url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def format_address(host: str, port: int) -> str:
    """
    C{host:port} for messages, with an IPv6 host in brackets
    (C{[::1]:7001}).
    """
    return f"{_format_url_host(host)}:{port}"


# --------------------------------------------------------------------------
# Values


def _port(instance: object, attribute: object, value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"port out of range: {value}")


@frozen(kw_only=True)
class NodeConfig:
    """
    One node of the cluster, from a C{[node:ID]} section.

    @ivar node_id: the C{ID} of the section.
    @ivar host: the address the node listens on and that its peers and
        clients connect to.
    @ivar http_port: HTTP API, WebSocket (C{/ws}) and dashboard.
    @ivar peer_port: the cluster-internal protocol.
    @ivar ftp_port: the FTP service.
    @ivar tls: whether the cluster file has a C{[tls]} section: HTTP and
        WebSocket are then https and wss only.
    @ivar bind: the address the node listens on when it differs from
        C{host} (behind NAT, or C{0.0.0.0} for every interface), or C{None}.
    @ivar ftp_passive_address: the IPv4 address C{PASV} tells FTP clients to
        connect to (the public one behind NAT), or C{None} for the address
        the client reached.
    @ivar ftp_passive_ports: the inclusive range of ports passive data
        connections listen on (to open in a firewall or publish from a
        container), or C{None} for any free port.
    """

    node_id: str = field(validator=validators.instance_of(str))
    host: str = field(validator=validators.instance_of(str))
    http_port: int = field(validator=[validators.instance_of(int), _port])
    peer_port: int = field(validator=[validators.instance_of(int), _port])
    ftp_port: int = field(validator=[validators.instance_of(int), _port])
    tls: bool = field(default=False, validator=validators.instance_of(bool))
    bind: Optional[str] = field(
        default=None, validator=validators.optional(validators.instance_of(str))
    )
    ftp_passive_address: Optional[str] = field(
        default=None, validator=validators.optional(validators.instance_of(str))
    )
    ftp_passive_ports: Optional[tuple[int, int]] = field(
        default=None, validator=validators.optional(validators.instance_of(tuple))
    )

    @property
    def listen_host(self) -> str:
        """
        The address the node's ports listen on: C{bind}, else C{host}.
        """
        return self.host if self.bind is None else self.bind

    @property
    def http_url(self) -> str:
        """
        The base URL of the node's HTTP API, e.g. C{http://127.0.0.1:7001}
        (C{https://} with TLS).
        """
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{_format_url_host(self.host)}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        """
        The node's WebSocket URL, e.g. C{ws://127.0.0.1:7001/ws} (C{wss://}
        with TLS).
        """
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{_format_url_host(self.host)}:{self.http_port}/ws"

    @property
    def ftp_url(self) -> str:
        """
        The node's FTP URL, e.g. C{ftp://127.0.0.1:7201}.
        """
        return f"ftp://{_format_url_host(self.host)}:{self.ftp_port}"


@frozen(kw_only=True)
class TLSConfig:
    """
    The C{[tls]} section: where each node finds its certificates.

    Paths are absolute once loaded (L{load_config}); C{{node}} in a path
    stands for the node id (L{for_node}).

    @ivar ca: the certificate authority (PEM) that signs every node's
        certificate; clients and peers trust it.
    @ivar cert: the node's certificate (PEM).
    @ivar key: the node's private key (PEM).
    """

    ca: str = field(validator=validators.instance_of(str))
    cert: str = field(validator=validators.instance_of(str))
    key: str = field(validator=validators.instance_of(str))

    def for_node(self, node_id: str) -> TLSConfig:
        """
        The same section with C{{node}} replaced by C{node_id} in every path.
        """
        return TLSConfig(
            ca=self.ca.replace("{node}", node_id),
            cert=self.cert.replace("{node}", node_id),
            key=self.key.replace("{node}", node_id),
        )


def _positive(instance: object, attribute: object, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")  # type: ignore[attr-defined]


def _not_negative(instance: object, attribute: object, value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")  # type: ignore[attr-defined]


@frozen(kw_only=True)
class ClusterConfig:
    """
    A whole cluster file, parsed and checked.

    Build one with L{load_config} or L{parse_config}; tests may also build one
    directly (every argument is keyword-only).

    @ivar path: the file it was read from (used in error messages).
    @ivar name: the cluster's name.
    @ivar secret: the shared secret peers prove knowledge of.
    @ivar replicas: copies of each key, resolved to a number
        (C{majority} is M{N // 2 + 1}).
    @ivar majority_replicas: whether the file said C{replicas = majority},
        so that the copy count follows the membership as it changes.
    @ivar data_dir: a directory for on-disk state, or C{None} for purely
        in memory; a relative one in the file is resolved against the
        file's folder, so that every node of a cluster started from one
        file finds the same place whatever its working directory.  Node
        C{nX} keeps its files in C{DATA_DIR/nX/} (L{node_data_dir}).
    @ivar fsync: when a write counts as durable (one of L{FSYNC_POLICIES}):
        C{always} once fsynced, C{everysec} once written (and fsynced
        within about a second), C{never} once written.
    @ivar nodes: every node, in file order.
    @ivar ftp_users: FTP user name -> password spec (C{plain:...} or a
        salted hash), from C{[ftp_users]}.
    @ivar users: user name -> L{User}, from the C{[user:NAME]} sections;
        with any, every request needs credentials.
    @ivar election_timeout: seconds; the upper bound of the randomised
        election timeout.
    @ivar heartbeat_interval: seconds between leader heartbeats.
    @ivar failure_timeout: seconds without hearing from a node before it is
        dead; it is suspect after half of that.
    @ivar request_timeout: seconds a coordinated request may take before it
        fails.
    @ivar max_value_bytes: the largest value accepted.
    @ivar memory_limit: bytes of stored data a node may hold; 0 means no
        limit.
    @ivar partitions: how many partitions the key space is split into.
    @ivar max_file_bytes: the largest file accepted over FTP or C{/files/}.
    @ivar anti_entropy_interval: seconds between replica comparisons.
    @ivar fill_rate: bytes of snapshots a node sends a second, at most, to
        fill new copies of its partitions (a node added, or back empty):
        1 MiB by default, which kept clients' p99 within 2x of normal while
        1,000,000 keys moved (4 MiB: up to 2.8x; docs/performance.md).
    @ivar ws_history: how many recent changes are kept for WebSocket
        clients resuming with C{since}.
    @ivar anonymous_ftp: whether FTP accepts anonymous logins (read-only).
    @ivar tls: the C{[tls]} section, or C{None} to speak plain TCP.
    """

    path: str = field(validator=validators.instance_of(str))
    name: str = field(validator=validators.instance_of(str))
    secret: bytes = field(validator=validators.instance_of(bytes))
    replicas: int = field(validator=validators.instance_of(int))
    majority_replicas: bool = field(default=False, validator=validators.instance_of(bool))
    data_dir: Optional[str] = field(
        default=None, validator=validators.optional(validators.instance_of(str))
    )
    fsync: str = field(default="always", validator=validators.in_(FSYNC_POLICIES))
    nodes: tuple[NodeConfig, ...] = field(
        converter=tuple,
        validator=validators.deep_iterable(validators.instance_of(NodeConfig)),
    )
    ftp_users: dict[str, str] = field(factory=dict, hash=False)
    users: dict[str, User] = field(factory=dict, hash=False)
    election_timeout: float = field(default=2.0, validator=_positive)
    heartbeat_interval: float = field(default=0.1, validator=_positive)
    failure_timeout: float = field(default=1.5, validator=_positive)
    request_timeout: float = field(default=5.0, validator=_positive)
    max_value_bytes: int = field(default=16 * MiB, validator=_positive)
    memory_limit: int = field(default=0, validator=_not_negative)
    partitions: int = field(default=64, validator=_positive)
    max_file_bytes: int = field(default=256 * MiB, validator=_positive)
    anti_entropy_interval: float = field(default=5.0, validator=_positive)
    fill_rate: int = field(default=MiB, validator=_positive)
    ws_history: int = field(default=10000, validator=_positive)
    anonymous_ftp: bool = field(default=False, validator=validators.instance_of(bool))
    tls: Optional[TLSConfig] = field(
        default=None, validator=validators.optional(validators.instance_of(TLSConfig))
    )

    def node_data_dir(self, node_id: str) -> Optional[str]:
        """
        The directory node C{node_id} keeps its files in, or C{None} without
        C{data_dir}.
        """
        return None if self.data_dir is None else os.path.join(self.data_dir, node_id)

    @property
    def majority(self) -> int:
        """
        The smallest number of nodes that is more than half of the cluster.
        """
        return len(self.nodes) // 2 + 1

    @property
    def node_ids(self) -> tuple[str, ...]:
        """
        The ids of every node, in file order.
        """
        return tuple(node.node_id for node in self.nodes)

    def node(self, node_id: str) -> NodeConfig:
        """
        The node called C{node_id}.

        @raise ConfigError: if the file defines no such node; the message
            names the file and C{--node}.
        """
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise ConfigError(
            self.path,
            None,
            "--node",
            f"unknown node id {node_id!r} (the file defines {', '.join(self.node_ids)})",
        )

    def peers(self, node_id: str) -> tuple[NodeConfig, ...]:
        """
        Every node but C{node_id}, in file order.

        @raise ConfigError: if the file defines no such node.
        """
        self.node(node_id)
        return tuple(node for node in self.nodes if node.node_id != node_id)


# --------------------------------------------------------------------------
# The schema


@frozen
class _Key:
    """
    One key of the C{[cluster]} section: how to read it and its default.
    """

    parse: Callable[[str], Any]
    default: Any
    doc: str
    check: Optional[Callable[[Any], Optional[str]]] = None


def _check_positive(value: Any) -> Optional[str]:
    return None if value > 0 else "must be greater than 0"


def _check_not_negative(value: Any) -> Optional[str]:
    return None if value >= 0 else "must not be negative"


def _check_election_timeout(value: Any) -> Optional[str]:
    if not 0 < value <= 60:
        return "must be greater than 0 and at most 60 seconds"
    return None


def _check_partitions(value: Any) -> Optional[str]:
    if not 1 <= value <= 65536:
        return "must be between 1 and 65536"
    return None


#: The keys of C{[cluster]} besides C{name}, C{secret}, C{replicas},
#: C{data_dir} and C{fsync}: tunables, each with its default.
CLUSTER_KEYS: dict[str, _Key] = {
    "election_timeout": _Key(
        parse_duration, 2.0, "upper bound of the randomised election timeout, seconds",
        _check_election_timeout,
    ),
    "heartbeat_interval": _Key(
        parse_duration, 0.1, "seconds between leader heartbeats", _check_positive
    ),
    "failure_timeout": _Key(
        parse_duration, 1.5,
        "seconds without news before a node is dead (suspect after half)",
        _check_positive,
    ),
    "request_timeout": _Key(
        parse_duration, 5.0, "seconds a client request may take", _check_positive
    ),
    "max_value_bytes": _Key(parse_size, 16 * MiB, "largest value accepted", _check_positive),
    "memory_limit": _Key(
        parse_size, 0, "bytes of data a node may hold; 0 = unlimited", _check_not_negative
    ),
    "partitions": _Key(_parse_int, 64, "partitions of the key space", _check_partitions),
    "max_file_bytes": _Key(parse_size, 256 * MiB, "largest FTP / /files/ upload", _check_positive),
    "anti_entropy_interval": _Key(
        parse_duration, 5.0, "seconds between replica comparisons", _check_positive
    ),
    "fill_rate": _Key(
        parse_size, MiB, "bytes a second a node sends to fill new copies", _check_positive
    ),
    "ws_history": _Key(
        _parse_int, 10000, "changes kept for WebSocket resume (since)", _check_positive
    ),
    "anonymous_ftp": _Key(parse_bool, False, "allow anonymous read-only FTP logins"),
}

#: The keys of C{[cluster]} that are not tunables.
_CLUSTER_BASE_KEYS = ("name", "secret", "replicas", "data_dir", "fsync")

#: The keys of the C{[tls]} section; all are required.
TLS_KEYS = ("ca", "cert", "key")

#: The keys of every C{[node:ID]} section; all are required.
NODE_KEYS = ("host", "http_port", "peer_port", "ftp_port")

#: The keys a C{[node:ID]} section may add: where the node listens when it is
#: reached at another address, and what FTP's passive mode announces.
OPTIONAL_NODE_KEYS = ("bind", "ftp_passive_address", "ftp_passive_ports")

_PORT_KEYS = ("http_port", "peer_port", "ftp_port")

#: What a node id may be (in a C{[node:ID]} section or a node added at run
#: time): letters, digits, '_', '.' and '-', starting with a letter or digit.
NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: What a host name or address may be (C{host}, C{bind}).
HOST_PATTERN = re.compile(r"^[A-Za-z0-9_.:%-]+$")

_WILDCARD_HOSTS = {"0.0.0.0", "::"}

_DEFAULT_NAME = "twisted_kv"


# --------------------------------------------------------------------------
# Parsing


def load_config(path: str, *, joining: bool = False) -> ClusterConfig:
    """
    Read and check the cluster file at C{path}.

    @param joining: the file is for a node joining a running cluster, which
        learns the members from the cluster: it may define no nodes.

    @raise ConfigError: if the file cannot be read or is not a valid cluster
        file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read the cluster file: {e.strerror or e}")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"not UTF-8 text: {e.reason} at byte {e.start}")
    config = parse_config(text, path, joining=joining)
    if config.data_dir is not None and not os.path.isabs(config.data_dir):
        # the same directory whatever the working directory a node runs in
        config = evolve(config, data_dir=os.path.abspath(config.data_dir))
    if config.tls is not None:
        config = evolve(
            config,
            tls=TLSConfig(
                **{key: os.path.abspath(getattr(config.tls, key)) for key in TLS_KEYS}
            ),
        )
    return config


def parse_config(text: str, path: str, *, joining: bool = False) -> ClusterConfig:
    """
    Check the text of a cluster file.

    @param path: where C{text} came from; used in error messages only.
    @param joining: as for L{load_config}.

    @raise ConfigError: if C{text} is not a valid cluster file.
    """
    parser = configparser.ConfigParser(
        comment_prefixes=(";", "#"),
        inline_comment_prefixes=(";", "#"),
        interpolation=None,
        strict=True,
        empty_lines_in_values=False,
        # No DEFAULT magic: a [DEFAULT] section is just an unknown section.
        default_section="\0no default section",
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=path)
    except configparser.DuplicateSectionError as e:
        raise ConfigError(path, e.section, None, f"duplicate section (line {e.lineno})")
    except configparser.DuplicateOptionError as e:
        raise ConfigError(path, e.section, e.option, f"duplicate key (line {e.lineno})")
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(
            path, None, None,
            f"line {e.lineno}: expected a [section] header, found {e.line.strip()!r}",
        )
    except configparser.ParsingError as e:
        lineno, line = e.errors[0]
        raise ConfigError(
            path, None, None,
            f"line {lineno}: expected 'key = value', found {_unrepr(line).strip()!r}",
        )
    for section in parser.sections():
        for key, value in parser[section].items():
            if "\n" in value:
                raise ConfigError(
                    path, section, key,
                    "the value spans several lines (an indented line continues the value above it)",
                )

    node_sections: list[str] = []
    for section in parser.sections():
        if section.startswith("node:"):
            node_sections.append(section)
        elif section not in ("cluster", "ftp_users", "tls") and not section.startswith(_USER):
            raise ConfigError(
                path, section, None,
                "unknown section (expected [cluster], [node:ID], [ftp_users], [tls] or [user:NAME])",
            )
    if not parser.has_section("cluster"):
        raise ConfigError(path, "cluster", None, "missing section")
    if not node_sections and not joining:
        raise ConfigError(path, "node:ID", None, "missing section: the file defines no nodes")

    nodes = tuple(_parse_node(path, parser, section) for section in node_sections)
    _check_ports(path, nodes)
    cluster = parser["cluster"]

    for key in cluster:
        if key not in _CLUSTER_BASE_KEYS and key not in CLUSTER_KEYS:
            raise ConfigError(path, "cluster", key, "unknown key")

    name = cluster.get("name", _DEFAULT_NAME).strip()
    if not name:
        raise ConfigError(path, "cluster", "name", "must not be empty")
    if "secret" not in cluster:
        raise ConfigError(path, "cluster", "secret", "missing key")
    secret = cluster["secret"].strip()
    if not secret:
        raise ConfigError(path, "cluster", "secret", "must not be empty")
    replicas_text = cluster.get("replicas", "majority")
    replicas = _parse_replicas(path, replicas_text, len(nodes) if nodes else None)
    data_dir = cluster.get("data_dir", "").strip() or None
    if data_dir is not None:
        data_dir = os.path.join(os.path.dirname(path), os.path.expanduser(data_dir))
    fsync = cluster.get("fsync", "always").strip().lower()
    if fsync not in FSYNC_POLICIES:
        raise ConfigError(
            path, "cluster", "fsync",
            f"{fsync!r} is not one of {', '.join(FSYNC_POLICIES)}",
        )

    tunables: dict[str, Any] = {}
    for key, spec in CLUSTER_KEYS.items():
        if key not in cluster:
            continue
        raw = cluster[key]
        try:
            value = spec.parse(raw)
        except ValueError as e:
            raise ConfigError(path, "cluster", key, str(e))
        if spec.check is not None:
            problem = spec.check(value)
            if problem is not None:
                raise ConfigError(path, "cluster", key, f"{raw.strip()!r} {problem}")
        tunables[key] = value

    heartbeat = tunables.get("heartbeat_interval", CLUSTER_KEYS["heartbeat_interval"].default)
    election = tunables.get("election_timeout", CLUSTER_KEYS["election_timeout"].default)
    if heartbeat >= election:
        blame = "heartbeat_interval" if "heartbeat_interval" in tunables else "election_timeout"
        raise ConfigError(
            path, "cluster", blame,
            f"heartbeat_interval ({heartbeat:g}s) must be shorter than"
            f" election_timeout ({election:g}s)",
        )

    ftp_users: dict[str, str] = {}
    if parser.has_section("ftp_users"):
        for user, spec in parser["ftp_users"].items():
            spec = spec.strip()
            if not spec:
                raise ConfigError(path, "ftp_users", user, "empty password spec (use plain:PASSWORD)")
            try:
                check_stored(spec)
            except ValueError as e:
                raise ConfigError(path, "ftp_users", user, str(e))
            ftp_users[user] = spec

    tls = _parse_tls(path, parser)
    if tls is not None:
        nodes = tuple(evolve(node, tls=True) for node in nodes)
    users = _parse_users(path, parser)
    for name in users.keys() & ftp_users.keys():
        raise ConfigError(path, _USER + name, None, "the user is also in [ftp_users]")
    if users and tunables.get("anonymous_ftp"):
        raise ConfigError(
            path, "cluster", "anonymous_ftp",
            "must be off with [user:NAME] sections: every login then needs credentials",
        )

    return ClusterConfig(
        path=path,
        name=name,
        secret=secret.encode("utf-8"),
        replicas=replicas,
        majority_replicas=replicas_text.strip().lower() == "majority",
        data_dir=data_dir,
        fsync=fsync,
        nodes=nodes,
        ftp_users=ftp_users,
        tls=tls,
        users=users,
        **tunables,
    )


def override_node(config: ClusterConfig, node_id: str, values: dict[str, str]) -> ClusterConfig:
    """
    C{config} with some L{OPTIONAL_NODE_KEYS} of node C{node_id} replaced
    by C{values} (text, as in the file): what one node's command line gives
    (a container told its public address) overrides its section.

    @raise ConfigError: naming the key as an option (C{--ftp-passive-ports})
        if a value is malformed or its ports overlap ports listened on, as
        in the file (L{_check_ports}), or C{--node} if there is no such
        node.
    """
    node = config.node(node_id)
    try:
        changed = evolve(node, **_parse_optional_node_keys(config.path, f"node:{node_id}", values))
        if changed.ftp_passive_ports != node.ftp_passive_ports:
            # The changed node checked last: a clash is reported on its key.
            _check_ports(config.path, tuple(n for n in config.nodes if n is not node) + (changed,))
    except ConfigError as error:
        raise ConfigError(
            config.path, None, "--" + (error.key or "").replace("_", "-"), error.problem
        ) from None
    nodes = tuple(changed if n is node else n for n in config.nodes)
    return evolve(config, nodes=nodes)


#: The keys of a C{[user:NAME]} section; only C{password} is required.
USER_KEYS = ("password", "read", "write", "files", "admin")

_USER = "user:"
_USER_NAME = re.compile(r"^[^\s:]+$")


def _parse_users(path: str, parser: configparser.ConfigParser) -> dict[str, User]:
    """
    The C{[user:NAME]} sections (see L{twisted_kv.core.users}).
    """
    users: dict[str, User] = {}
    for section in parser.sections():
        if not section.startswith(_USER):
            continue
        name = section[len(_USER):]
        if not _USER_NAME.match(name):
            raise ConfigError(path, section, None, "bad user name (no spaces or ':')")
        values = parser[section]
        for key in values:
            if key not in USER_KEYS:
                raise ConfigError(path, section, key, "unknown key")
        password = values.get("password", "").strip()
        if not password:
            raise ConfigError(
                path, section, "password", "missing key (use plain:PASSWORD or a hash)"
            )
        try:
            check_stored(password)
        except ValueError as e:
            raise ConfigError(path, section, "password", str(e))
        def parsed(key: str, parse: Callable[[str], Any], default: str) -> Any:
            try:
                return parse(values.get(key, default))
            except ValueError as e:
                raise ConfigError(path, section, key, str(e))

        read = parsed("read", parse_prefixes, "")
        write = parsed("write", parse_prefixes, "")
        files = parsed("files", parse_files_root, "")
        admin = parsed("admin", parse_bool, "no")
        grant = Grant(name=name, read=read, write=write, files=files, admin=admin)
        users[name] = User(name=name, password=password, grant=grant)
    return users


def _unrepr(line: str) -> str:
    """
    The text of a line as L{configparser.ParsingError} reports it (some
    Python versions give its C{repr}).
    """
    try:
        value = ast.literal_eval(line)
    except (ValueError, SyntaxError):
        return line
    return value if isinstance(value, str) else line


def _parse_replicas(path: str, raw: str, node_count: Optional[int]) -> int:
    """
    The copy count C{raw} asks for among C{node_count} nodes (C{None}: not
    known yet, for a joining node).
    """
    text = raw.strip()
    if text.lower() == "majority":
        return 1 if node_count is None else node_count // 2 + 1
    try:
        replicas = _parse_int(text)
    except ValueError:
        raise ConfigError(
            path, "cluster", "replicas",
            f"{text!r} is neither 'majority' nor an integer",
        )
    if not 1 <= replicas <= (replicas if node_count is None else node_count):
        raise ConfigError(
            path, "cluster", "replicas",
            f"{replicas} is not between 1 and the number of nodes ({node_count})",
        )
    return replicas


def _parse_tls(path: str, parser: configparser.ConfigParser) -> Optional[TLSConfig]:
    """
    The C{[tls]} section, its paths relative to the file's folder, or
    C{None} without one.  Whether the files are usable is checked when a
    node starts (L{twisted_kv.tls.load_node_tls}).
    """
    if not parser.has_section("tls"):
        return None
    values = parser["tls"]
    for key in values:
        if key not in TLS_KEYS:
            raise ConfigError(path, "tls", key, "unknown key (expected ca, cert and key)")
    paths = {}
    for key in TLS_KEYS:
        if key not in values:
            raise ConfigError(path, "tls", key, "missing key")
        value = values[key].strip()
        if not value:
            raise ConfigError(path, "tls", key, "must not be empty")
        paths[key] = os.path.join(os.path.dirname(path), os.path.expanduser(value))
    return TLSConfig(**paths)


def _parse_node(path: str, parser: configparser.ConfigParser, section: str) -> NodeConfig:
    node_id = section[len("node:"):]
    if not NODE_ID_PATTERN.match(node_id):
        raise ConfigError(
            path, section, None,
            f"bad node id {node_id!r} (use letters, digits, '_', '.', '-')",
        )
    values = parser[section]
    for key in values:
        if key not in NODE_KEYS and key not in OPTIONAL_NODE_KEYS:
            raise ConfigError(path, section, key, "unknown key")
    for key in NODE_KEYS:
        if key not in values:
            raise ConfigError(path, section, key, "missing key")
    host = values["host"].strip()
    if not HOST_PATTERN.match(host):
        raise ConfigError(path, section, "host", f"bad host {host!r}")
    ports = {}
    for key in _PORT_KEYS:
        raw = values[key].strip()
        try:
            port = _parse_int(raw)
        except ValueError:
            raise ConfigError(path, section, key, f"not a port number: {raw!r}")
        if not 1 <= port <= 65535:
            raise ConfigError(path, section, key, f"port {port} is not between 1 and 65535")
        ports[key] = port
    return NodeConfig(node_id=node_id, host=host, **ports, **_parse_optional_node_keys(path, section, values))


def _parse_optional_node_keys(path: str, section: str, values: Any) -> dict[str, Any]:
    """
    The L{OPTIONAL_NODE_KEYS} a node section gives, checked.
    """
    optional: dict[str, Any] = {}
    bind = values.get("bind", "").strip()
    if bind:
        if not HOST_PATTERN.match(bind):
            raise ConfigError(path, section, "bind", f"bad address {bind!r}")
        optional["bind"] = bind
    address = values.get("ftp_passive_address", "").strip()
    if address:
        try:
            optional["ftp_passive_address"] = str(ipaddress.IPv4Address(address))
        except ValueError:
            raise ConfigError(
                path, section, "ftp_passive_address",
                f"{address!r} is not an IPv4 address (PASV can only announce one)",
            )
    ports = values.get("ftp_passive_ports", "").strip()
    if ports:
        try:
            optional["ftp_passive_ports"] = parse_port_range(ports)
        except ValueError as e:
            raise ConfigError(path, section, "ftp_passive_ports", str(e))
    return optional


def _check_ports(path: str, nodes: tuple[NodeConfig, ...]) -> None:
    """
    Refuse two listeners on one address, whichever nodes and kinds they
    are: no port a node listens on, nor any of its passive FTP data ports,
    may be another's on the same host.
    """
    seen: list[tuple[str, int, int, str, str]] = []
    for node in nodes:
        section = f"node:{node.node_id}"
        for key, low, high in _listened(node):
            for host, other_low, other_high, other_section, other_key in seen:
                same_host = (
                    host == node.host or host in _WILDCARD_HOSTS or node.host in _WILDCARD_HOSTS
                )
                if same_host and low <= other_high and other_low <= high:
                    raise ConfigError(
                        path, section, key,
                        _clash(low, high, other_low, other_high, f"[{other_section}] {other_key}"),
                    )
            seen.append((node.host, low, high, section, key))


def _listened(node: NodeConfig) -> list[tuple[str, int, int]]:
    """
    The ports node C{node} listens on, as C{(key, low, high)} ranges.
    """
    ports = [(key, getattr(node, key), getattr(node, key)) for key in _PORT_KEYS]
    if node.ftp_passive_ports is not None:
        ports.append(("ftp_passive_ports", *node.ftp_passive_ports))
    return ports


def _clash(low: int, high: int, other_low: int, other_high: int, other: str) -> str:
    """
    Why ports C{low}-C{high} cannot be used beside C{other_low}-C{other_high}
    (C{other}'s, on the same host).
    """
    if low == high and other_low == other_high:
        return f"duplicate port {low} (also {other})"
    if other_low == other_high:
        return f"ports {low}-{high} include port {other_low} ({other})"
    if low == high:
        return f"port {low} is one of the passive FTP ports {other_low}-{other_high} ({other})"
    return (
        f"ports {low}-{high} overlap {other} ({other_low}-{other_high}) on the same host:"
        " two nodes' passive FTP transfers would take each other's ports"
    )
