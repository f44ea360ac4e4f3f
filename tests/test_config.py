# -*- test-case-name: tests.test_config -*-
"""
Tests for L{twisted_kv.core.config}: the cluster file.
"""

from __future__ import annotations

import os
from textwrap import dedent

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.core.config import (
    CLUSTER_KEYS,
    NODE_KEYS,
    OPTIONAL_NODE_KEYS,
    USER_KEYS,
    ClusterConfig,
    ConfigError,
    GiB,
    KiB,
    MiB,
    NodeConfig,
    load_config,
    parse_bool,
    parse_config,
    parse_duration,
    parse_port_range,
    parse_size,
)
from twisted_kv.core.users import Grant

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NODES = """
[node:n1]
host = 127.0.0.1
http_port = 7001
peer_port = 7101
ftp_port = 7201

[node:n2]
host = 127.0.0.1
http_port = 7002
peer_port = 7102
ftp_port = 7202

[node:n3]
host = 127.0.0.1
http_port = 7003
peer_port = 7103
ftp_port = 7203
"""

_MINIMAL = "[cluster]\nsecret = s3cret\n" + _NODES


def _nodes(count: int, base: int = 7001) -> tuple[NodeConfig, ...]:
    return tuple(
        NodeConfig(
            node_id=f"n{i + 1}",
            host="127.0.0.1",
            http_port=base + i,
            peer_port=base + 100 + i,
            ftp_port=base + 200 + i,
        )
        for i in range(count)
    )


def _node_sections(count: int) -> str:
    return "".join(
        f"[node:n{i + 1}]\nhost = 127.0.0.1\nhttp_port = {7001 + i}\n"
        f"peer_port = {7101 + i}\nftp_port = {7201 + i}\n\n"
        for i in range(count)
    )


class GoodConfigTests(SynchronousTestCase):
    """
    Valid cluster files parse into the expected L{ClusterConfig}.
    """

    def test_minimal(self) -> None:
        """
        A file with only a secret and nodes gets every default: the cluster
        name C{twisted_kv}, majority replication, no data directory, no FTP
        users and the documented tunables.
        """
        self.assertEqual(
            parse_config(_MINIMAL, "x.ini"),
            ClusterConfig(
                path="x.ini",
                name="twisted_kv",
                secret=b"s3cret",
                replicas=2,
                majority_replicas=True,
                data_dir=None,
                nodes=_nodes(3),
                ftp_users={},
                election_timeout=2.0,
                heartbeat_interval=0.1,
                failure_timeout=1.5,
                request_timeout=5.0,
                max_value_bytes=16 * MiB,
                memory_limit=0,
                partitions=64,
                max_file_bytes=256 * MiB,
                anti_entropy_interval=5.0,
                fill_rate=MiB,
                ws_history=10000,
                anonymous_ftp=False,
            ),
        )

    def test_defaults_match_schema(self) -> None:
        """
        The defaults of L{ClusterConfig} are those documented in
        L{CLUSTER_KEYS}.
        """
        config = ClusterConfig(
            path="p", name="n", secret=b"s", replicas=1, nodes=_nodes(1)
        )
        for key, spec in CLUSTER_KEYS.items():
            self.assertEqual((key, getattr(config, key)), (key, spec.default))

    def test_everything(self) -> None:
        """
        Every key is read, with comments of both kinds, full-line and inline,
        and the tunables in their various notations.
        """
        text = dedent(
            """\
            # a full-line comment
            ; another one
            [cluster]
            name = demo                 ; inline comment
            secret = a-long-random-string   # another inline comment
            replicas = 3
            data_dir = /var/lib/kv
            fsync = everysec
              ; an indented comment line
            election_timeout = 3s
            heartbeat_interval = 250ms
            failure_timeout = 4
            request_timeout = 7.5
            max_value_bytes = 1MiB
            memory_limit = 2GiB
            partitions = 16
            max_file_bytes = 64M
            anti_entropy_interval = 30s
            fill_rate = 512KiB
            ws_history = 500
            anonymous_ftp = yes

            [ftp_users]
            alice = plain:wonderland    ; plain text
            Bob = scrypt:16384:8:1:c2FsdA==:a2V5
            """
        ) + _node_sections(4)
        self.assertEqual(
            parse_config(text, "etc/demo.ini"),
            ClusterConfig(
                path="etc/demo.ini",
                name="demo",
                secret=b"a-long-random-string",
                replicas=3,
                data_dir="/var/lib/kv",
                fsync="everysec",
                nodes=_nodes(4),
                ftp_users={"alice": "plain:wonderland", "Bob": "scrypt:16384:8:1:c2FsdA==:a2V5"},
                election_timeout=3.0,
                heartbeat_interval=0.25,
                failure_timeout=4.0,
                request_timeout=7.5,
                max_value_bytes=MiB,
                memory_limit=2 * GiB,
                partitions=16,
                max_file_bytes=64 * MiB,
                anti_entropy_interval=30.0,
                fill_rate=512 * 1024,
                ws_history=500,
                anonymous_ftp=True,
            ),
        )

    def test_semicolon_inside_value(self) -> None:
        """
        A comment character not preceded by whitespace is part of the value.
        """
        config = parse_config(
            "[cluster]\nsecret = a;b#c ; comment\n" + _NODES, "x.ini"
        )
        self.assertEqual(config.secret, b"a;b#c")

    def test_utf8_secret(self) -> None:
        """
        The secret is the UTF-8 encoding of the text in the file.
        """
        config = parse_config("[cluster]\nsecret = clé\n" + _NODES, "x.ini")
        self.assertEqual(config.secret, "clé".encode("utf-8"))

    def test_node_order(self) -> None:
        """
        Nodes keep the order of the file, whatever their ids.
        """
        text = "[cluster]\nsecret = s\n" + _NODES.replace("node:n1", "node:zz")
        config = parse_config(text, "x.ini")
        self.assertEqual(config.node_ids, ("zz", "n2", "n3"))

    def test_majority(self) -> None:
        """
        C{replicas = majority} (also the default) and L{ClusterConfig.majority}
        are M{N // 2 + 1}.
        """
        for count, expected in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)]:
            text = "[cluster]\nsecret = s\nreplicas = Majority\n" + _node_sections(count)
            config = parse_config(text, "x.ini")
            self.assertEqual(
                (count, config.replicas, config.majority), (count, expected, expected)
            )

    def test_replicas_bounds(self) -> None:
        """
        An integer C{replicas} from 1 to N is accepted as is.
        """
        for replicas in (1, 2, 3):
            text = f"[cluster]\nsecret = s\nreplicas = {replicas}\n" + _NODES
            self.assertEqual(parse_config(text, "x.ini").replicas, replicas)

    def test_majority_follows_membership(self) -> None:
        """
        The config says whether C{replicas} is C{majority}, so that the
        copy count follows the membership as it changes.
        """
        majority = parse_config("[cluster]\nsecret = s\n" + _NODES, "x.ini")
        fixed = parse_config("[cluster]\nsecret = s\nreplicas = 2\n" + _NODES, "x.ini")
        self.assertEqual((majority.majority_replicas, fixed.majority_replicas), (True, False))

    def test_joining_file(self) -> None:
        """
        The file of a node joining a running cluster may define no nodes (the
        cluster gives them), but keeps every other check.
        """
        config = parse_config("[cluster]\nsecret = s\nreplicas = 3\n", "x.ini", joining=True)
        self.assertEqual((config.nodes, config.replicas), ((), 3))
        with self.assertRaises(ConfigError) as caught:
            parse_config("[cluster]\nsecret = s\nreplicas = 0\n", "x.ini", joining=True)
        self.assertIn("replicas", str(caught.exception))

    def test_same_port_on_other_hosts(self) -> None:
        """
        Nodes on different hosts may use the same port numbers.
        """
        text = "[cluster]\nsecret = s\n" + "".join(
            f"[node:n{i}]\nhost = 10.0.0.{i}\nhttp_port = 7001\n"
            f"peer_port = 7101\nftp_port = 7201\n"
            for i in (1, 2, 3)
        )
        config = parse_config(text, "x.ini")
        self.assertEqual(
            [(n.host, n.http_port) for n in config.nodes],
            [("10.0.0.1", 7001), ("10.0.0.2", 7001), ("10.0.0.3", 7001)],
        )

    def test_node_behind_nat(self) -> None:
        """
        A node may listen on another address than the C{host} it is reached
        at, and name the address and ports FTP's passive mode announces;
        without them it listens on C{host} and announces what the client
        reached.  Ports are checked against C{host}: every node may listen
        on C{0.0.0.0} of its own machine.
        """
        text = "[cluster]\nsecret = s\n" + "".join(
            f"[node:n{i}]\nhost = 203.0.113.{i}\nhttp_port = 7001\n"
            f"peer_port = 7101\nftp_port = 7201\nbind = 0.0.0.0\n"
            f"ftp_passive_address = 203.0.113.{i}\nftp_passive_ports = 30000 - 30009\n"
            for i in (1, 2, 3)
        )
        node = parse_config(text, "x.ini").node("n2")
        self.assertEqual(
            (node.host, node.listen_host, node.ftp_passive_address, node.ftp_passive_ports),
            ("203.0.113.2", "0.0.0.0", "203.0.113.2", (30000, 30009)),
        )
        plain = parse_config(_MINIMAL, "x.ini").node("n1")
        self.assertEqual(
            (plain.listen_host, plain.bind, plain.ftp_passive_address, plain.ftp_passive_ports),
            ("127.0.0.1", None, None, None),
        )
        self.assertEqual(
            parse_config(_MINIMAL.replace("ftp_port = 7201", "ftp_port = 7201\nbind =\n"), "x.ini"),
            parse_config(_MINIMAL, "x.ini"),
        )

    def test_node_lookup(self) -> None:
        """
        L{ClusterConfig.node} finds a node by id and L{ClusterConfig.peers}
        lists the others.
        """
        config = parse_config(_MINIMAL, "x.ini")
        nodes = _nodes(3)
        self.assertEqual(config.node("n2"), nodes[1])
        self.assertEqual(config.peers("n2"), (nodes[0], nodes[2]))

    def test_urls(self) -> None:
        """
        A node's HTTP, WebSocket and FTP URLs; IPv6 hosts are bracketed.
        """
        node = NodeConfig(
            node_id="n1", host="127.0.0.1", http_port=7001, peer_port=7101, ftp_port=7201
        )
        self.assertEqual(
            (node.http_url, node.ws_url, node.ftp_url),
            ("http://127.0.0.1:7001", "ws://127.0.0.1:7001/ws", "ftp://127.0.0.1:7201"),
        )
        v6 = NodeConfig(node_id="n1", host="::1", http_port=1, peer_port=2, ftp_port=3)
        self.assertEqual(
            (v6.http_url, v6.ws_url, v6.ftp_url),
            ("http://[::1]:1", "ws://[::1]:1/ws", "ftp://[::1]:3"),
        )

    def test_data_dir_relative_to_file(self) -> None:
        """
        A relative C{data_dir} is resolved against the cluster file's
        folder, and each node keeps its files in a folder named after it.
        """
        text = _MINIMAL.replace("[cluster]\n", "[cluster]\ndata_dir = data\n")
        config = parse_config(text, "etc/x.ini")
        self.assertEqual(
            (config.data_dir, config.node_data_dir("n2")), ("etc/data", "etc/data/n2")
        )
        self.assertEqual(parse_config(text, "x.ini").data_dir, "data")
        absolute = _MINIMAL.replace("[cluster]\n", "[cluster]\ndata_dir = /srv/kv\n")
        self.assertEqual(parse_config(absolute, "etc/x.ini").data_dir, "/srv/kv")
        self.assertIsNone(parse_config(_MINIMAL, "etc/x.ini").node_data_dir("n1"))

    def test_data_dir_made_absolute_on_load(self) -> None:
        """
        Read from a file, a relative C{data_dir} becomes absolute, so that a
        node finds it whatever its working directory.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "x.ini")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_MINIMAL.replace("[cluster]\n", "[cluster]\ndata_dir = data\n"))
        self.assertEqual(load_config(path).data_dir, os.path.abspath(os.path.join(folder, "data")))

    def test_fsync(self) -> None:
        """
        C{fsync} is C{always} unless the file says C{everysec} or C{never}.
        """
        self.assertEqual(parse_config(_MINIMAL, "x.ini").fsync, "always")
        for policy in ("always", "everysec", "never"):
            text = _MINIMAL.replace("[cluster]\n", f"[cluster]\nfsync = {policy}\n")
            self.assertEqual(parse_config(text, "x.ini").fsync, policy)

    def test_load(self) -> None:
        """
        L{load_config} reads a file and names it in the result.
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(_MINIMAL)
        self.assertEqual(load_config(path), parse_config(_MINIMAL, path))


class ShippedConfigTests(SynchronousTestCase):
    """
    The sample cluster files under C{etc/} are valid.
    """

    def test_local(self) -> None:
        """
        C{etc/cluster-local.ini} is three nodes on loopback, ports
        7001-7003, 7101-7103 and 7201-7203, with the FTP user alice, keeping
        their data under C{etc/data/local/}.
        """
        config = load_config(os.path.join(_REPO, "etc", "cluster-local.ini"))
        self.assertEqual(
            (config.nodes, config.replicas, config.ftp_users, config.data_dir),
            (_nodes(3), 2, {"alice": "plain:wonderland"}, os.path.join(_REPO, "etc", "data", "local")),
        )

    def test_five(self) -> None:
        """
        C{etc/cluster-5.ini} is five nodes on loopback, ports 7011-7015,
        7111-7115 and 7211-7215, with a majority of three, keeping their
        data under C{etc/data/local5/}, apart from the three-node cluster's.
        """
        config = load_config(os.path.join(_REPO, "etc", "cluster-5.ini"))
        self.assertEqual(
            (config.nodes, config.replicas, config.ftp_users, config.data_dir),
            (_nodes(5, base=7011), 3, {"alice": "plain:wonderland"}, os.path.join(_REPO, "etc", "data", "local5")),
        )

    def test_users(self) -> None:
        """
        C{etc/cluster-users.ini} is three nodes on loopback, in memory, with
        users root (everything) and alice (her prefixes and files area).
        """
        config = load_config(os.path.join(_REPO, "etc", "cluster-users.ini"))
        self.assertEqual((config.nodes, config.data_dir), (_nodes(3), None))
        self.assertEqual(config.users["root"].grant, Grant("root", ("",), ("",), "/", True))
        self.assertEqual(
            config.users["alice"].grant,
            Grant("alice", ("users/", "public/"), ("users/alice/",), "/alice/", False),
        )

    def test_readme_documents_every_key(self) -> None:
        """
        The configuration reference in README.md names every key.
        """
        with open(os.path.join(_REPO, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        keys = [
            "name", "secret", "replicas", "data_dir", "fsync",
            *CLUSTER_KEYS, *NODE_KEYS, *OPTIONAL_NODE_KEYS, *USER_KEYS,
        ]
        self.assertEqual([k for k in keys if f"`{k}`" not in readme], [])


class DocumentationTests(SynchronousTestCase):
    """
    README.md starts with the two commands a fresh machine needs, and CI runs
    the documented test command.
    """

    def first_commands(self) -> list[str]:
        with open(os.path.join(_REPO, "README.md"), encoding="utf-8") as f:
            lines = f.read().splitlines()
        return [line.strip() for line in lines[2:4]]

    def test_first_lines(self) -> None:
        """
        After the title come the install-and-start and install-and-test
        commands.
        """
        self.assertEqual(
            self.first_commands(),
            [
                "python -m pip install . && kvcluster etc/cluster-local.ini",
                "python -m pip install '.[test]' && python -m twisted.trial tests",
            ],
        )

    def test_ci_runs_readme_command(self) -> None:
        """
        The last command of C{.ci/run} is the README's test command.
        """
        with open(os.path.join(_REPO, ".ci", "run"), encoding="utf-8") as f:
            commands = [
                line.strip() for line in f
                if line.strip() and not line.strip().startswith("#")
            ]
        self.assertEqual(commands[-1], self.first_commands()[1])


class ValueSyntaxTests(SynchronousTestCase):
    """
    Sizes, durations and booleans.
    """

    def test_sizes(self) -> None:
        """
        Plain byte counts, binary single-letter and IEC units, decimal SI
        units, fractions, spaces and any letter case.
        """
        cases = {
            "100000": 100000,
            "0": 0,
            "10k": 10 * KiB,
            "10K": 10 * KiB,
            "64M": 64 * MiB,
            "1G": GiB,
            "512MiB": 512 * MiB,
            "512 mib": 512 * MiB,
            "2GiB": 2 * GiB,
            "1TiB": 1024 * GiB,
            "1T": 1024 * GiB,
            "5kB": 5000,
            "3MB": 3 * 1000**2,
            "2GB": 2 * 1000**3,
            "1TB": 1000**4,
            "1.5G": GiB + GiB // 2,
            "0.5k": 512,
            "7B": 7,
        }
        self.assertEqual({text: parse_size(text) for text in cases}, cases)

    @given(
        st.integers(min_value=0, max_value=10**6),
        st.sampled_from(
            [("", 1), ("k", KiB), ("MiB", MiB), ("g", GiB), ("kB", 1000), ("GB", 1000**3)]
        ),
        st.sampled_from(["", " "]),
    )
    def test_size_units(self, number: int, unit: tuple[str, int], space: str) -> None:
        """
        An integer with a unit is that many units, with or without a space.
        """
        suffix, factor = unit
        self.assertEqual(parse_size(f"{number}{space}{suffix}"), number * factor)

    def test_bad_sizes(self) -> None:
        """
        Anything else is a L{ValueError} that says what was expected.
        """
        self.assertEqual(
            [str(self.assertRaises(ValueError, parse_size, text)) for text in
             ["", "-1", "1 2", "MiB", "1e6", "12X"]],
            [
                "not a size: '' (try 100000, 64MiB, 2GiB)",
                "not a size: '-1' (try 100000, 64MiB, 2GiB)",
                "not a size: '1 2' (try 100000, 64MiB, 2GiB)",
                "not a size: 'MiB' (try 100000, 64MiB, 2GiB)",
                "not a size: '1e6' (try 100000, 64MiB, 2GiB)",
                "unknown size unit 'X' in '12X' (use k, M, G, T, KiB, MiB, GiB, TiB,"
                " kB, MB, GB, TB)",
            ],
        )

    def test_durations(self) -> None:
        """
        Seconds, with an optional C{s} or C{ms} unit.
        """
        cases = {"2": 2.0, "0.5": 0.5, "1.5s": 1.5, "250ms": 0.25, " 3 s ": 3.0, ".5": 0.5}
        self.assertEqual({text: parse_duration(text) for text in cases}, cases)

    def test_bad_durations(self) -> None:
        """
        Anything else is a L{ValueError}.
        """
        for text in ["", "-1", "nan", "inf", "2m", "1h", "s"]:
            self.assertEqual(
                str(self.assertRaises(ValueError, parse_duration, text)),
                f"not a duration: {text!r} (try 2, 1.5s, 250ms)",
            )

    def test_port_ranges(self) -> None:
        """
        A port range is C{LOW-HIGH}, inclusive, or a single port.
        """
        self.assertEqual(
            [parse_port_range(text) for text in ["30000-30009", " 21 ", "1-65535", "7 - 7"]],
            [(30000, 30009), (21, 21), (1, 65535), (7, 7)],
        )
        for text in ["", "a-b", "1-", "-5", "10-9", "65536", "1,2"]:
            self.assertRaises(ValueError, parse_port_range, text)

    def test_booleans(self) -> None:
        """
        The usual spellings of true and false.
        """
        cases = {
            "true": True, "Yes": True, "on": True, "1": True,
            "false": False, "NO": False, "off": False, "0": False,
        }
        self.assertEqual({text: parse_bool(text) for text in cases}, cases)
        self.assertEqual(
            str(self.assertRaises(ValueError, parse_bool, "maybe")),
            "not a boolean: 'maybe' (use true or false)",
        )


class ConfigErrorTests(SynchronousTestCase):
    """
    Every problem is a L{ConfigError} whose text is one line naming the file,
    the section and the key.
    """

    def assert_error(self, text: str, message: str, path: str = "etc/x.ini") -> None:
        """
        Parsing C{text} fails with exactly C{message}.
        """
        error = self.assertRaises(ConfigError, parse_config, text, path)
        self.assertEqual(str(error), message)
        self.assertNotIn("\n", str(error))

    def test_fields(self) -> None:
        """
        The parts of the message are also attributes.
        """
        error = self.assertRaises(
            ConfigError, parse_config, "[cluster]\n" + _NODES, "x.ini"
        )
        self.assertEqual(
            (error.path, error.section, error.key, error.problem),
            ("x.ini", "cluster", "secret", "missing key"),
        )

    def test_bad_fsync(self) -> None:
        """
        An unknown C{fsync} policy is refused, naming the ones there are.
        """
        self.assert_error(
            _MINIMAL.replace("[cluster]\n", "[cluster]\nfsync = sometimes\n"),
            "etc/x.ini: [cluster] fsync: 'sometimes' is not one of always, everysec, never",
        )

    def test_duplicate_port_across_nodes(self) -> None:
        """
        Two nodes on one host may not share a port; the message names both.
        """
        self.assert_error(
            _MINIMAL.replace("http_port = 7002", "http_port = 7001"),
            "etc/x.ini: [node:n2] http_port: duplicate port 7001 (also [node:n1] http_port)",
        )

    def test_duplicate_port_across_kinds(self) -> None:
        """
        Different kinds of port collide too, within a node and across nodes.
        """
        self.assert_error(
            _MINIMAL.replace("ftp_port = 7201", "ftp_port = 7101"),
            "etc/x.ini: [node:n1] ftp_port: duplicate port 7101 (also [node:n1] peer_port)",
        )
        self.assert_error(
            _MINIMAL.replace("peer_port = 7103", "peer_port = 7002"),
            "etc/x.ini: [node:n3] peer_port: duplicate port 7002 (also [node:n2] http_port)",
        )

    def test_duplicate_port_wildcard(self) -> None:
        """
        A node listening on every interface collides with any host's port.
        """
        self.assert_error(
            _MINIMAL.replace("host = 127.0.0.1\nhttp_port = 7002", "host = 0.0.0.0\nhttp_port = 7001"),
            "etc/x.ini: [node:n2] http_port: duplicate port 7001 (also [node:n1] http_port)",
        )

    def test_overlapping_passive_ports(self) -> None:
        """
        The passive FTP ports of two nodes on one host may not overlap,
        nor include a port a node listens on; the message names both
        keys.  Nodes on different hosts may use the same range.
        """
        def passive(n1: str, n2: str) -> str:
            return _MINIMAL.replace("ftp_port = 7201\n", f"ftp_port = 7201\nftp_passive_ports = {n1}\n").replace(
                "ftp_port = 7202\n", f"ftp_port = 7202\nftp_passive_ports = {n2}\n"
            )

        self.assert_error(
            passive("30000-30009", "30005-30014"),
            "etc/x.ini: [node:n2] ftp_passive_ports: ports 30005-30014 overlap"
            " [node:n1] ftp_passive_ports (30000-30009) on the same host:"
            " two nodes' passive FTP transfers would take each other's ports",
        )
        self.assert_error(
            passive("30000-30009", "7100-7109"),
            "etc/x.ini: [node:n2] ftp_passive_ports: ports 7100-7109 include port 7101"
            " ([node:n1] peer_port)",
        )
        self.assert_error(
            passive("7002-7009", "30010-30019"),
            "etc/x.ini: [node:n2] http_port: port 7002 is one of the passive FTP ports"
            " 7002-7009 ([node:n1] ftp_passive_ports)",
        )
        config = parse_config(passive("30000-30009", "30010-30019"), "etc/x.ini")
        self.assertEqual(
            [node.ftp_passive_ports for node in config.nodes], [(30000, 30009), (30010, 30019), None]
        )
        elsewhere = passive("30000-30009", "30000-30009").replace(
            "host = 127.0.0.1\nhttp_port = 7002", "host = 127.0.0.2\nhttp_port = 7002"
        )
        self.assertEqual(parse_config(elsewhere, "etc/x.ini").node("n2").ftp_passive_ports, (30000, 30009))

    def test_missing_cluster(self) -> None:
        """
        The C{[cluster]} section is required.
        """
        self.assert_error(_NODES, "etc/x.ini: [cluster]: missing section")

    def test_no_nodes(self) -> None:
        """
        At least one C{[node:ID]} section is required.
        """
        self.assert_error(
            "[cluster]\nsecret = s\n",
            "etc/x.ini: [node:ID]: missing section: the file defines no nodes",
        )

    def test_empty_file(self) -> None:
        """
        An empty file lacks C{[cluster]}.
        """
        self.assert_error("", "etc/x.ini: [cluster]: missing section")

    def test_unknown_section(self) -> None:
        """
        Sections other than C{[cluster]}, C{[node:ID]}, C{[ftp_users]} and
        C{[user:NAME]} are refused, C{[DEFAULT]} included.
        """
        for section in ["clusters", "DEFAULT", "node", "users"]:
            self.assert_error(
                f"{_MINIMAL}\n[{section}]\n",
                f"etc/x.ini: [{section}]: unknown section"
                " (expected [cluster], [node:ID], [ftp_users], [tls] or [user:NAME])",
            )

    def test_bad_node_id(self) -> None:
        """
        Node ids are made of letters, digits, C{_}, C{.} and C{-}.
        """
        for node_id in ["", "n 1", "-n"]:
            self.assert_error(
                _MINIMAL.replace("[node:n2]", f"[node:{node_id}]"),
                f"etc/x.ini: [node:{node_id}]: bad node id {node_id!r}"
                " (use letters, digits, '_', '.', '-')",
            )

    def test_unknown_cluster_key(self) -> None:
        """
        A misspelt key in C{[cluster]} is refused.
        """
        self.assert_error(
            "[cluster]\nsecret = s\nreplica = 2\n" + _NODES,
            "etc/x.ini: [cluster] replica: unknown key",
        )

    def test_keys_are_case_sensitive(self) -> None:
        """
        Keys are lower case; other spellings are unknown keys.
        """
        self.assert_error(
            "[cluster]\nSecret = s\n" + _NODES,
            "etc/x.ini: [cluster] Secret: unknown key",
        )

    def test_unknown_node_key(self) -> None:
        """
        A misspelt key in a node section is refused.
        """
        self.assert_error(
            _MINIMAL.replace("ftp_port = 7202", "ftp_port = 7202\nhttpport = 8000"),
            "etc/x.ini: [node:n2] httpport: unknown key",
        )

    def test_missing_node_key(self) -> None:
        """
        Every node key is required.
        """
        for key, line in [
            ("host", "host = 127.0.0.1\nhttp_port = 7002"),
            ("http_port", "http_port = 7002\n"),
            ("peer_port", "peer_port = 7102\n"),
            ("ftp_port", "ftp_port = 7202\n"),
        ]:
            replacement = "http_port = 7002" if key == "host" else ""
            self.assert_error(
                _MINIMAL.replace(line, replacement),
                f"etc/x.ini: [node:n2] {key}: missing key",
            )

    def test_bad_ports(self) -> None:
        """
        Ports are integers from 1 to 65535.
        """
        for value, problem in [
            ("http", "not a port number: 'http'"),
            ("70.5", "not a port number: '70.5'"),
            ("", "not a port number: ''"),
            ("0", "port 0 is not between 1 and 65535"),
            ("65536", "port 65536 is not between 1 and 65535"),
            ("-1", "port -1 is not between 1 and 65535"),
        ]:
            self.assert_error(
                _MINIMAL.replace("peer_port = 7102", f"peer_port = {value}"),
                f"etc/x.ini: [node:n2] peer_port: {problem}",
            )

    def test_bad_host(self) -> None:
        """
        A host is one address or name.
        """
        for host in ["", "a b", "h/x"]:
            self.assert_error(
                _MINIMAL.replace("host = 127.0.0.1\nhttp_port = 7003", f"host = {host}\nhttp_port = 7003"),
                f"etc/x.ini: [node:n3] host: bad host {host!r}",
            )

    def test_bad_nat_keys(self) -> None:
        """
        C{bind} is one address or name; C{ftp_passive_address} an IPv4
        address (all C{PASV} can name); C{ftp_passive_ports} a range of
        ports, low to high.
        """
        for line, message in [
            ("bind = a b", "bind: bad address 'a b'"),
            ("ftp_passive_address = ftp.example.com",
             "ftp_passive_address: 'ftp.example.com' is not an IPv4 address (PASV can only announce one)"),
            ("ftp_passive_address = ::1",
             "ftp_passive_address: '::1' is not an IPv4 address (PASV can only announce one)"),
            ("ftp_passive_ports = 30000:30009",
             "ftp_passive_ports: not a port range: '30000:30009' (try 30000-30009)"),
            ("ftp_passive_ports = 30009-30000",
             "ftp_passive_ports: '30009-30000' is not a range of ports from 1 to 65535, low to high"),
            ("ftp_passive_ports = 0-10",
             "ftp_passive_ports: '0-10' is not a range of ports from 1 to 65535, low to high"),
        ]:
            self.assert_error(
                _MINIMAL.replace("ftp_port = 7202", f"ftp_port = 7202\n{line}"),
                f"etc/x.ini: [node:n2] {message}",
            )

    def test_secret(self) -> None:
        """
        The secret is required and may not be empty (a comment alone is
        empty).
        """
        self.assert_error(
            "[cluster]\nname = x\n" + _NODES, "etc/x.ini: [cluster] secret: missing key"
        )
        self.assert_error(
            "[cluster]\nsecret =    ; to do\n" + _NODES,
            "etc/x.ini: [cluster] secret: must not be empty",
        )

    def test_empty_name(self) -> None:
        """
        A cluster name, when given, may not be empty.
        """
        self.assert_error(
            "[cluster]\nname =\nsecret = s\n" + _NODES,
            "etc/x.ini: [cluster] name: must not be empty",
        )

    def test_replicas(self) -> None:
        """
        C{replicas} is C{majority} or an integer from 1 to N.
        """
        for value, problem in [
            ("most", "'most' is neither 'majority' nor an integer"),
            ("", "'' is neither 'majority' nor an integer"),
            ("0", "0 is not between 1 and the number of nodes (3)"),
            ("4", "4 is not between 1 and the number of nodes (3)"),
        ]:
            self.assert_error(
                f"[cluster]\nsecret = s\nreplicas = {value}\n" + _NODES,
                f"etc/x.ini: [cluster] replicas: {problem}",
            )

    def test_bad_tunables(self) -> None:
        """
        Malformed or out-of-range tunables name their key.
        """
        for line, message in [
            ("election_timeout = 0", "election_timeout: '0' must be greater than 0 and at most 60 seconds"),
            ("election_timeout = 61", "election_timeout: '61' must be greater than 0 and at most 60 seconds"),
            ("election_timeout = soon", "election_timeout: not a duration: 'soon' (try 2, 1.5s, 250ms)"),
            ("heartbeat_interval = 0ms", "heartbeat_interval: '0ms' must be greater than 0"),
            ("failure_timeout = -1", "failure_timeout: not a duration: '-1' (try 2, 1.5s, 250ms)"),
            ("request_timeout = 0", "request_timeout: '0' must be greater than 0"),
            ("max_value_bytes = 0", "max_value_bytes: '0' must be greater than 0"),
            ("max_value_bytes = lots", "max_value_bytes: not a size: 'lots' (try 100000, 64MiB, 2GiB)"),
            ("memory_limit = 2 GiB RAM", "memory_limit: not a size: '2 GiB RAM' (try 100000, 64MiB, 2GiB)"),
            ("partitions = 0", "partitions: '0' must be between 1 and 65536"),
            ("partitions = 8.5", "partitions: not an integer: '8.5'"),
            ("max_file_bytes = 1Q", "max_file_bytes: unknown size unit 'Q' in '1Q' (use k, M, G, T, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"),
            ("anti_entropy_interval = 0s", "anti_entropy_interval: '0s' must be greater than 0"),
            ("ws_history = 0", "ws_history: '0' must be greater than 0"),
            ("anonymous_ftp = perhaps", "anonymous_ftp: not a boolean: 'perhaps' (use true or false)"),
        ]:
            self.assert_error(
                f"[cluster]\nsecret = s\n{line}\n" + _NODES,
                f"etc/x.ini: [cluster] {message}",
            )

    def test_heartbeat_shorter_than_election(self) -> None:
        """
        Heartbeats must come more often than elections could start; the key
        that was set is blamed.
        """
        self.assert_error(
            "[cluster]\nsecret = s\nheartbeat_interval = 2s\n" + _NODES,
            "etc/x.ini: [cluster] heartbeat_interval: heartbeat_interval (2s) must be"
            " shorter than election_timeout (2s)",
        )
        self.assert_error(
            "[cluster]\nsecret = s\nelection_timeout = 50ms\n" + _NODES,
            "etc/x.ini: [cluster] election_timeout: heartbeat_interval (0.1s) must be"
            " shorter than election_timeout (0.05s)",
        )

    def test_empty_ftp_password(self) -> None:
        """
        An FTP user needs a password spec.
        """
        self.assert_error(
            _MINIMAL + "[ftp_users]\nalice =\n",
            "etc/x.ini: [ftp_users] alice: empty password spec (use plain:PASSWORD)",
        )

    def test_bad_ftp_password(self) -> None:
        """
        A password spec must be C{plain:} or a well-formed C{scrypt:} hash.
        """
        for spec, problem in [
            ("wonderland", "a password must start with 'plain:' or 'scrypt:'"),
            ("scrypt:1:2", "a scrypt password is scrypt:<n>:<r>:<p>:<salt>:<key>"),
            ("scrypt:16384:8:1:!!:a2V5", "malformed scrypt password"),
        ]:
            self.assert_error(
                _MINIMAL + f"[ftp_users]\nalice = {spec}\n",
                f"etc/x.ini: [ftp_users] alice: {problem}",
            )

    def test_duplicate_section(self) -> None:
        """
        A section may appear once.
        """
        self.assert_error(
            _MINIMAL + "[node:n1]\n",
            "etc/x.ini: [node:n1]: duplicate section (line 21)",
        )

    def test_duplicate_key(self) -> None:
        """
        A key may appear once per section.
        """
        self.assert_error(
            "[cluster]\nsecret = a\nsecret = b\n" + _NODES,
            "etc/x.ini: [cluster] secret: duplicate key (line 3)",
        )

    def test_text_before_first_section(self) -> None:
        """
        Keys before the first section header are refused, as is a broken
        header.
        """
        self.assert_error(
            "secret = s\n" + _MINIMAL,
            "etc/x.ini: line 1: expected a [section] header, found 'secret = s'",
        )
        self.assert_error(
            "[cluster\nsecret = s\n",
            "etc/x.ini: line 1: expected a [section] header, found '[cluster'",
        )

    def test_garbage_line(self) -> None:
        """
        A line that is neither a header, a comment nor C{key = value} is
        refused with its line number.
        """
        self.assert_error(
            "[cluster]\nsecret = s\n\n  stray words\n" + _NODES,
            "etc/x.ini: line 4: expected 'key = value', found 'stray words'",
        )

    def test_continuation_line(self) -> None:
        """
        An indented line right after a key would silently continue its value
        (configparser's multi-line values); it is refused instead.
        """
        self.assert_error(
            "[cluster]\nsecret = s\n  name = oops\n" + _NODES,
            "etc/x.ini: [cluster] secret: the value spans several lines"
            " (an indented line continues the value above it)",
        )

    def test_unknown_node_id(self) -> None:
        """
        Asking for a node the file does not define names the file and
        C{--node}.
        """
        config = parse_config(_MINIMAL, "etc/x.ini")
        error = self.assertRaises(ConfigError, config.node, "n9")
        self.assertEqual(
            str(error),
            "etc/x.ini: --node: unknown node id 'n9' (the file defines n1, n2, n3)",
        )
        self.assertRaises(ConfigError, config.peers, "n9")

    def test_missing_file(self) -> None:
        """
        A file that cannot be read is named, with the reason.
        """
        path = os.path.join(self.mktemp(), "nope.ini")
        self.assertEqual(
            str(self.assertRaises(ConfigError, load_config, path)),
            f"{path}: cannot read the cluster file: No such file or directory",
        )

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 text is refused.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[cluster]\nsecret = \xff\n")
        self.assertEqual(
            str(self.assertRaises(ConfigError, load_config, path)),
            f"{path}: not UTF-8 text: invalid start byte at byte 19",
        )

    def test_one_line(self) -> None:
        """
        Even a problem text with a newline is shown on one line.
        """
        self.assertEqual(
            str(ConfigError("p", "s", "k", "two\nlines")), "p: [s] k: two lines"
        )
        self.assertEqual(str(ConfigError("p", None, None, "bad")), "p: bad")
