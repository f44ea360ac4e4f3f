# -*- test-case-name: tests.test_tap -*-
"""
Tests for L{twisted_kv.app.tap}: the C{kvnode} options and service maker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_client_support import serve
from twisted_kv.app.tap import Options, makeService
from twisted_kv.core.config import ClusterConfig, ConfigError, NodeConfig, load_config
from twisted_kv.core.roster import request_add

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LOCAL = os.path.join(_REPO, "etc", "cluster-local.ini")

#: Run twistd with this interpreter, from the repository, whatever is on PATH.
#: The options overriding node keys, when not given.
_NO_OVERRIDES = {"ftp-passive-address": None, "ftp-passive-ports": None}

_TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class OptionsTests(SynchronousTestCase):
    """
    Parsing of the C{kvnode} command line.
    """

    def parse(self, argv: list[str]) -> dict[str, Any]:
        options = Options()
        options.parseOptions(argv)
        return dict(options)

    def test_long(self) -> None:
        """
        C{--config} and C{--node}.
        """
        self.assertEqual(
            self.parse(["--config", "etc/x.ini", "--node", "n2"]),
            {"config": "etc/x.ini", "node": "n2", "join": None, **_NO_OVERRIDES},
        )

    def test_short(self) -> None:
        """
        C{-c}, C{-n} and C{-j}, and the C{--option=value} form.
        """
        self.assertEqual(
            self.parse(["-c", "x.ini", "--node=n1", "-j", "http://h:1"]),
            {"config": "x.ini", "node": "n1", "join": "http://h:1", **_NO_OVERRIDES},
        )

    def test_node_overrides(self) -> None:
        """
        C{--ftp-passive-address} and C{--ftp-passive-ports} are kept as given;
        L{makeService} checks them.
        """
        self.assertEqual(
            self.parse(
                ["-c", "x.ini", "-n", "n1", "--ftp-passive-address", "203.0.113.7",
                 "--ftp-passive-ports=30000-30009"]
            ),
            {"config": "x.ini", "node": "n1", "ftp-passive-address": "203.0.113.7",
             "ftp-passive-ports": "30000-30009", "join": None},
        )

    def test_required(self) -> None:
        """
        Both options are required: without one, the program ends with a line
        naming the command, the option and what it gives, and pointing to
        C{--help}.
        """
        config = "--config is required (the cluster file)"
        node = "--node is required (this node's id in the cluster file)"
        for argv, missing in [
            ([], config),
            (["--node", "n1"], config),
            (["--config", "x.ini"], node),
            (["--config", "x.ini", "--node", ""], node),
        ]:
            error = self.assertRaises(SystemExit, self.parse, argv)
            self.assertEqual(
                error.code, f"twistd kvnode: {missing}; see twistd kvnode --help"
            )

    def test_no_arguments(self) -> None:
        """
        Positional arguments and unknown options are refused the same way.
        """
        for argv, problem in [
            (["-c", "x.ini", "-n", "n1", "extra"], "Wrong number of arguments"),
            (["--confg", "x.ini", "-n", "n1"], "option --confg not recognized"),
        ]:
            error = self.assertRaises(SystemExit, self.parse, argv)
            self.assertEqual(
                error.code, f"twistd kvnode: {problem}; see twistd kvnode --help"
            )


class MakeServiceTests(SynchronousTestCase):
    """
    L{makeService} loads the cluster file and hands it to the builder.
    """

    def setUp(self) -> None:
        self.calls: list[tuple[ClusterConfig, str, Any]] = []
        self.service = Service()

    def build(self, config: ClusterConfig, node_id: str, reactor: Any, joined: Any) -> IService:
        self.assertIsNone(joined)
        self.calls.append((config, node_id, reactor))
        return self.service

    def options(self, config: str, node: str, *more: str) -> Options:
        options = Options()
        options.parseOptions(["--config", config, "--node", node, *more])
        return options

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_builds(self) -> None:
        """
        The builder gets the parsed cluster file, the node id and the
        reactor, and its service is returned.
        """
        reactor = MemoryReactor()
        service = makeService(self.options(_LOCAL, "n2"), reactor, _build=self.build)
        self.assertIs(service, self.service)
        self.assertEqual(self.calls, [(load_config(_LOCAL), "n2", reactor)])

    def test_node_overrides(self) -> None:
        """
        C{--ftp-passive-address} and C{--ftp-passive-ports} replace the
        node's keys of the same names, and only that node's.
        """
        reactor = MemoryReactor()
        options = self.options(
            _LOCAL, "n2", "--ftp-passive-address", "203.0.113.7", "--ftp-passive-ports", "30000-30009"
        )
        makeService(options, reactor, _build=self.build)
        config = self.calls[0][0]
        n2 = config.node("n2")
        self.assertEqual((n2.ftp_passive_address, n2.ftp_passive_ports), ("203.0.113.7", (30000, 30009)))
        local = load_config(_LOCAL)
        self.assertEqual(config.peers("n2"), local.peers("n2"))

    def test_bad_node_override(self) -> None:
        """
        A malformed override ends the program with one line naming the
        option.
        """
        error = self.assertRaises(
            SystemExit,
            makeService,
            self.options(_LOCAL, "n1", "--ftp-passive-ports", "30000:30009"),
            MemoryReactor(),
            _build=self.build,
        )
        self.assertEqual(error.code, f"{_LOCAL}: --ftp-passive-ports: not a port range: '30000:30009' (try 30000-30009)")
        self.assertEqual(self.calls, [])

    def test_overlapping_passive_ports_override(self) -> None:
        """
        Passive ports given on the command line are checked as the file's
        are: a range overlapping another node's passive ports, or holding
        a port some node listens on, ends the program with one line naming
        the option and what it clashes with; the builder is not called.
        """
        with open(_LOCAL, encoding="utf-8") as local:
            text = local.read()
        path = self.write(
            text.replace("ftp_port = 7201", "ftp_port = 7201\nftp_passive_ports = 30000-30009")
        )
        for ports, clash in (
            ("30005-30014", "ports 30005-30014 overlap [node:n1] ftp_passive_ports (30000-30009)"
                            " on the same host: two nodes' passive FTP transfers would take"
                            " each other's ports"),
            ("7100-7109", "ports 7100-7109 include port 7101 ([node:n1] peer_port)"),
            ("7202-7202", "duplicate port 7202 (also [node:n2] ftp_port)"),
        ):
            error = self.assertRaises(
                SystemExit,
                makeService,
                self.options(path, "n2", "--ftp-passive-ports", ports),
                MemoryReactor(),
                _build=self.build,
            )
            self.assertEqual(error.code, f"{path}: --ftp-passive-ports: {clash}")
        self.assertEqual(self.calls, [])
        makeService(
            self.options(path, "n1", "--ftp-passive-ports", "30000-30004"), MemoryReactor(), _build=self.build
        )
        self.assertEqual(self.calls[0][0].node("n1").ftp_passive_ports, (30000, 30004))
        # compose.yaml's nodes, each on a host of its own, with their ranges.
        compose = os.path.join(_REPO, "etc", "cluster-compose.ini")
        makeService(
            self.options(compose, "n2", "--ftp-passive-ports", "30021-30030"), MemoryReactor(), _build=self.build
        )
        self.assertEqual(self.calls[1][0].node("n2").ftp_passive_ports, (30021, 30030))

    def test_global_reactor(self) -> None:
        """
        Without a reactor, the global one is used.
        """
        from twisted.internet import reactor

        makeService(self.options(_LOCAL, "n1"), _build=self.build)
        self.assertIs(self.calls[0][2], reactor)

    def test_unknown_node(self) -> None:
        """
        An unknown node id ends the program with the one-line message; the
        builder is not called.
        """
        error = self.assertRaises(
            SystemExit,
            makeService,
            self.options(_LOCAL, "n9"),
            MemoryReactor(),
            _build=self.build,
        )
        self.assertEqual(
            error.code,
            f"{_LOCAL}: --node: unknown node id 'n9' (the file defines n1, n2, n3)",
        )
        self.assertEqual(self.calls, [])

    def test_bad_file(self) -> None:
        """
        A bad cluster file ends the program with the one-line message.
        """
        path = self.write("[cluster]\nsecret = s\n")
        error = self.assertRaises(
            SystemExit,
            makeService,
            self.options(path, "n1"),
            MemoryReactor(),
            _build=self.build,
        )
        self.assertEqual(
            error.code, f"{path}: [node:ID]: missing section: the file defines no nodes"
        )
        self.assertEqual(self.calls, [])

    def test_missing_file(self) -> None:
        """
        A missing cluster file ends the program with the one-line message.
        """
        path = os.path.abspath(self.mktemp())
        error = self.assertRaises(
            SystemExit,
            makeService,
            self.options(path, "n1"),
            MemoryReactor(),
            _build=self.build,
        )
        self.assertEqual(
            error.code, f"{path}: cannot read the cluster file: No such file or directory"
        )

    def test_builder_config_error(self) -> None:
        """
        A L{ConfigError} found while building the node (say, an unusable
        data directory) ends the program the same way.
        """

        def build(config: ClusterConfig, node_id: str, reactor: Any, joined: Any) -> IService:
            raise ConfigError(config.path, "cluster", "data_dir", "not a directory")

        error = self.assertRaises(
            SystemExit,
            makeService,
            self.options(_LOCAL, "n1"),
            MemoryReactor(),
            _build=build,
        )
        self.assertEqual(error.code, f"{_LOCAL}: [cluster] data_dir: not a directory")


class TwistdTests(SynchronousTestCase):
    """
    A real C{twistd kvnode} refuses user errors with one line and no
    traceback.  (These start a process, which opens no port.)
    """

    def twistd(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _TWISTD + ["-n", "--pidfile=", "kvnode", *argv],
            cwd=_REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_unknown_node(self) -> None:
        """
        C{--node} naming no node of the file: status 1, one line on stderr.
        """
        result = self.twistd("--config", "etc/cluster-local.ini", "--node", "n9")
        self.assertEqual(
            (result.returncode, result.stderr),
            (
                1,
                "etc/cluster-local.ini: --node: unknown node id 'n9'"
                " (the file defines n1, n2, n3)\n",
            ),
        )

    def test_missing_option(self) -> None:
        """
        No C{--config}: status 1, and one line on stderr naming the command
        as the user typed it, not twistd's path and first argument.
        """
        result = self.twistd("--node", "n1")
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (
                1,
                "",
                "twistd kvnode: --config is required (the cluster file);"
                " see twistd kvnode --help\n",
            ),
        )

    def test_bad_file(self) -> None:
        """
        A duplicate port: status 1, one line on stderr naming file, section
        and key.
        """
        path = os.path.abspath(self.mktemp())
        with open(_LOCAL, encoding="utf-8") as f:
            text = f.read().replace("http_port = 7002", "http_port = 7001")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        result = self.twistd("--config", path, "--node", "n1")
        self.assertEqual(
            (result.returncode, result.stderr),
            (
                1,
                f"{path}: [node:n2] http_port: duplicate port 7001"
                " (also [node:n1] http_port)\n",
            ),
        )

    def test_port_in_use(self) -> None:
        """
        A port in use: status 1, one line on stderr naming the node, the
        address and the key, before twistd logs anything.
        """
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        path = os.path.abspath(self.mktemp())
        with open(_LOCAL, encoding="utf-8") as f:
            text = f.read().replace("http_port = 7001", f"http_port = {port}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        result = self.twistd("--config", path, "--node", "n1")
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (
                1,
                "",
                f"kvnode n1: cannot listen on 127.0.0.1:{port} (http_port):"
                " address already in use\n",
            ),
        )


class JoinTests(TestCase):
    """
    With C{--join URL}, the file holds only C{[cluster]}: the members, this
    node's address among them, come from the cluster at C{URL}.
    """

    def setUp(self) -> None:
        self.node = serve(self)
        self.path = self.mktemp()
        with open(self.path, "w", encoding="utf-8") as f:
            f.write("[cluster]\nname = test\nsecret = s\n")
        self.built: list[tuple[ClusterConfig, str, Any]] = []

    def build(self, config: ClusterConfig, node_id: str, reactor: Any, joined: Any) -> IService:
        self.built.append((config, node_id, joined))
        return Service()

    def join(self, node_id: str, url: str) -> Deferred[Any]:
        options = Options()
        options.parseOptions(["--config", self.path, "--node", node_id, "--join", url])
        return deferToThread(makeService, options, MemoryReactor(), _build=self.build)

    @inlineCallbacks
    def test_member_joins(self) -> Any:
        self.node.roster = request_add(self.node.roster, NodeConfig(
            node_id="n4", host="127.0.0.1", http_port=7004, peer_port=7104, ftp_port=7204
        ))
        yield self.join("n4", self.node.url)
        (config, node_id, joined), = self.built
        self.assertEqual((node_id, joined), ("n4", self.node.roster))
        self.assertEqual(config.node_ids, ("n1", "n2", "n3", "n4"))
        self.assertEqual((config.node("n4").http_port, config.replicas), (7004, 2))

    @inlineCallbacks
    def test_not_a_member(self) -> Any:
        error = yield self.assertFailure(self.join("n4", self.node.url), SystemExit)
        self.assertEqual(
            error.code,
            f"kvnode n4: not a member of the cluster at {self.node.url}: add it first"
            " (kvctl member add n4 ...)",
        )
        self.assertEqual(self.built, [])

    @inlineCallbacks
    def test_unreachable(self) -> Any:
        url = self.node.url
        yield self.node.stop()
        error = yield self.assertFailure(self.join("n4", url), SystemExit)
        self.assertTrue(error.code.startswith(f"kvnode n4: cannot join through {url}: "), error.code)
