# -*- test-case-name: tests.test_kvctl -*-
"""
C{kvctl}: the command-line client of a twisted_kv cluster.

    kvctl [--node URL] get KEY                 the value's bytes, as stored
    kvctl put KEY VALUE [--ttl S] [--if-match VERSION] [--if-none-match]
                        [--content-type TYPE]  prints the new version
    kvctl put KEY -                            the value is read from stdin
    kvctl delete KEY [--if-match VERSION]
    kvctl list [--prefix P] [--limit N]        one key per line, in key order
    kvctl watch [PREFIX] [--since R] [--files] [--count N]
                                               one JSON line per change; moves
                                               to another node (from /cluster)
                                               when the connection is lost
    kvctl cluster                              the cluster's state, as JSON
    kvctl member list                          one member a line: id, address,
                                               role, partitions it is primary of;
                                               then the change in progress
    kvctl member add ID --host H --http-port P --peer-port Q --ftp-port R
                                               adds a node (docs: "Growing a
                                               cluster"); start it with --join
    kvctl member remove ID                     moves its copies away, then
                                               removes it
    kvctl token                                a bearer token for --user, as JSON
    kvctl passwd                               reads a password, prints its salted
                                               hash for the cluster file
    kvctl snapshot save FILE                   every key and file, each partition
                                               as of one moment (docs/backup.md)
    kvctl snapshot restore FILE                loads such a file into a cluster
    kvctl certs create DIR --config FILE       a CA and one certificate per node
                                               of FILE, for its [tls] section

The node defaults to C{$KVCTL_NODE}, else C{http://127.0.0.1:7001}; any node
of the cluster answers for all of it.  For a cluster with C{[tls]}, give an
C{https://} URL and C{--cacert} (or C{$KVCTL_CACERT}): the cluster's CA.  On
a cluster with users, give C{--user NAME:PASSWORD} (or C{--user NAME} to be
asked for the password) or C{--token TOKEN} (from C{kvctl token}) before the
command.

Exit status: 0 on success, 1 when the node refused the request (the message
names the reason, e.g. C{no key 'x' (404)}), 2 for a usage error, 3 when
the node cannot be reached, 4 when a snapshot file (or a certificate file)
cannot be read or written, or is damaged.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import os
import ssl
import sys
from typing import BinaryIO, Callable, Mapping, Optional, Sequence, TextIO

from twisted_kv.app import passwd
from twisted_kv.client import DEFAULT_URL, Client
from twisted_kv.core.config import ConfigError
from twisted_kv.errors import KVError

__all__ = ["main"]

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_FILE = 4


def _positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return number


def _parser(default_node: str, default_cacert: Optional[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvctl",
        description="Read, write and watch the keys of a twisted_kv cluster.",
        epilog="Exit status: 0 ok, 1 refused by the node, 2 usage error, 3 node unreachable,"
        " 4 snapshot file unusable.",
    )
    parser.add_argument(
        "--node",
        default=default_node,
        metavar="URL",
        help="any node of the cluster (default: $KVCTL_NODE, else %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the node"
    )
    parser.add_argument(
        "--cacert",
        default=default_cacert,
        metavar="FILE",
        help="the CA (PEM) to trust for https:// nodes: the cluster's [tls] ca"
        " (default: $KVCTL_CACERT, else the system's CAs)",
    )
    credentials = parser.add_mutually_exclusive_group()
    credentials.add_argument(
        "--user", metavar="NAME[:PASSWORD]", help="log in as NAME (asks for the password if not given)"
    )
    credentials.add_argument("--token", metavar="TOKEN", help="a bearer token from 'kvctl token'")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get = commands.add_parser("get", help="print the value of a key")
    get.add_argument("key")

    put = commands.add_parser("put", help="store a value; prints its version")
    put.add_argument("key")
    put.add_argument("value", help="the value, or - to read it from stdin")
    put.add_argument("--ttl", type=float, metavar="S", help="the key disappears after S seconds")
    put.add_argument("--if-match", metavar="VERSION", help="only replace this version")
    put.add_argument("--if-none-match", action="store_true", help="only create the key")
    put.add_argument("--content-type", metavar="TYPE", help="default: text/plain for a VALUE, "
                     "application/octet-stream for stdin")

    delete = commands.add_parser("delete", help="remove a key")
    delete.add_argument("key")
    delete.add_argument("--if-match", metavar="VERSION", help="only remove this version")

    listing = commands.add_parser("list", help="print the keys, one a line")
    listing.add_argument("--prefix", default="", help="only the keys starting with it")
    listing.add_argument("--limit", type=_positive, metavar="N", help="at most N keys")

    watch = commands.add_parser("watch", help="print each change as a JSON line")
    watch.add_argument("prefix", nargs="?", default="", help="only the keys (or paths) starting with it")
    watch.add_argument("--since", type=int, metavar="R", help="start after revision R")
    watch.add_argument("--files", action="store_true", help="watch file paths instead of keys")
    watch.add_argument("--count", type=_positive, metavar="N", help="exit after N changes")

    commands.add_parser("cluster", help="print the cluster's state as JSON")
    commands.add_parser("token", help="print a bearer token for --user as JSON")
    commands.add_parser("passwd", help="read a password, print its salted hash for the cluster file")

    member = commands.add_parser("member", help="list, add or remove the cluster's members")
    member_actions = member.add_subparsers(dest="action", required=True, metavar="ACTION")
    member_actions.add_parser("list", help="print the members and the change in progress")
    add = member_actions.add_parser("add", help="add a node; then start it with --join")
    add.add_argument("id")
    add.add_argument("--host", required=True)
    for port in ("http", "peer", "ftp"):
        add.add_argument(f"--{port}-port", type=_positive, required=True, metavar="PORT")
    remove = member_actions.add_parser("remove", help="move a node's copies away, then remove it")
    remove.add_argument("id")

    snapshot = commands.add_parser("snapshot", help="back up or restore the whole cluster")
    actions = snapshot.add_subparsers(dest="action", required=True, metavar="ACTION")
    save = actions.add_parser("save", help="write every key and file to FILE")
    save.add_argument("file", metavar="FILE")
    restore = actions.add_parser("restore", help="load a snapshot FILE into the cluster")
    restore.add_argument("file", metavar="FILE")

    certs = commands.add_parser("certs", help="make TLS certificates for a cluster")
    certs_actions = certs.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = certs_actions.add_parser(
        "create", help="a CA and one certificate per node of the cluster file, in DIR"
    )
    create.add_argument("directory", metavar="DIR")
    create.add_argument("--config", required=True, metavar="FILE", help="the cluster file")
    return parser


def _line(stream: BinaryIO, text: str) -> None:
    stream.write(text.encode("utf-8") + b"\n")
    stream.flush()


class _WatchReport:
    """
    What C{kvctl watch} says on stderr about its connections: a node lost
    (or unreachable) and the one tried next, and watching again.
    """

    def __init__(self, names: Mapping[str, str], stderr: TextIO) -> None:
        """
        @param names: node ids by HTTP URL; other URLs are shown as they are.
        """
        self._names = names
        self._stderr = stderr
        self._watching = False
        self._lost = False
        self.revision: Optional[int] = None

    def _name(self, url: str) -> str:
        return self._names.get(url.rstrip("/"), url)

    def lost(self, url: str, reason: str, next_url: str) -> None:
        what = "lost" if self._watching else "cannot reach"
        self._say(f"{what} {self._name(url)} ({reason}); trying {self._name(next_url)}...")
        self._watching = False
        self._lost = True

    def watching(self, url: str) -> None:
        self._watching = True
        if self._lost:
            self._lost = False
            after = "" if self.revision is None else f" after revision {self.revision}"
            self._say(f"watching again through {self._name(url)}{after}")

    def _say(self, message: str) -> None:
        print(f"kvctl: {message}", file=self._stderr, flush=True)


def _watch(client: Client, arguments: argparse.Namespace, stdout: BinaryIO, stderr: TextIO) -> None:
    """
    Print each change as a JSON line, moving to another node of the cluster
    (from C{/cluster}) when the connection is lost, and resuming after the
    last change printed.  Several C{compacted} frames in a row (the old
    node's and the new one's) are one gap: only the first is printed.
    """
    try:
        nodes = {node["http"].rstrip("/"): node["id"] for node in client.cluster()["nodes"]}
    except KVError:
        nodes = {}
    report = _WatchReport(nodes, stderr)
    report.revision = arguments.since
    gap_told = False
    with client.watch(
        arguments.prefix,
        since=arguments.since,
        files=arguments.files,
        timeout=arguments.timeout,
        others=list(nodes),
        on_lost=report.lost,
        on_watching=report.watching,
    ) as events:
        count = 0
        for event in events:
            compacted = event["type"] == "compacted"
            if compacted and gap_told:
                continue
            gap_told = compacted
            _line(stdout, json.dumps(event, ensure_ascii=False))
            report.revision = max(event["revision"], report.revision or 0)
            count += 1
            if count == arguments.count:
                return


class _FileProblem(Exception):
    """
    A snapshot file cannot be read or written, or is damaged.
    """


def _snapshot(client: Client, arguments: argparse.Namespace, stdout: BinaryIO) -> None:
    from twisted_kv.app import snapshot
    from twisted_kv.core.backup import BadSnapshot

    path = arguments.file
    try:
        if arguments.action == "save":
            outcome = snapshot.save(client, path)
            _line(stdout, outcome.describe("saved", "to", path))
        else:
            outcome = snapshot.restore(client, path)
            _line(stdout, outcome.describe("restored", "from", path))
    except BadSnapshot as error:
        raise _FileProblem(f"cannot restore {path}: {error}") from None
    except OSError as error:
        if error.filename is None:
            raise
        raise _FileProblem(f"{error.filename}: {error.strerror or error}") from None


def _certs(arguments: argparse.Namespace, stdout: BinaryIO) -> None:
    """
    Write a CA and the nodes' certificates for the cluster file, and say
    which C{[tls]} section uses them.
    """
    from twisted_kv.app.certs import create_certificates
    from twisted_kv.core.config import load_config

    config = load_config(arguments.config)
    directory = arguments.directory
    try:
        names = create_certificates(config, directory)
    except OSError as error:
        problem = str(error) if error.filename is None else f"{error.filename}: {error.strerror}"
        raise _FileProblem(problem) from None
    _line(stdout, f"wrote {', '.join(names)} in {directory}")
    config_folder = os.path.dirname(os.path.abspath(arguments.config))
    relative = os.path.relpath(os.path.abspath(directory), config_folder)
    _line(
        stdout,
        f"[tls] for {arguments.config}: ca = {relative}/ca.pem, cert = {relative}/{{node}}.pem,"
        f" key = {relative}/{{node}}.key (keep {directory}/ca.key offline)",
    )


def _member(client: Client, arguments: argparse.Namespace, stdout: BinaryIO) -> None:
    """
    C{kvctl member ...}: each prints the membership as it then is.
    """
    if arguments.action == "add":
        view = client.add_member(
            {
                "id": arguments.id, "host": arguments.host, "http_port": arguments.http_port,
                "peer_port": arguments.peer_port, "ftp_port": arguments.ftp_port,
            }
        )
    elif arguments.action == "remove":
        view = client.remove_member(arguments.id)
    else:
        view = client.members()
    for node in view["members"]:
        _line(
            stdout,
            f"{node['id']} {node['host']} http={node['http_port']} peer={node['peer_port']}"
            f" ftp={node['ftp_port']} {node['role']} primaries={node['primaries']}",
        )
    change = view["change"]
    if change is not None:
        verb = "adding" if change["kind"] == "add" else "removing"
        _line(stdout, f"in progress: {verb} {change['node']}, {len(view['moving_partitions'])} partitions moving")


def _run(
    arguments: argparse.Namespace,
    stdin: BinaryIO,
    stdout: BinaryIO,
    stderr: TextIO,
    client_factory: Callable[..., Client],
    ask: Callable[[str], str],
) -> None:
    if arguments.command == "certs":
        _certs(arguments, stdout)
        return
    credentials = {}
    if arguments.user is not None:
        user = arguments.user
        if ":" not in user:
            user += ":" + ask(f"Password for {user}: ")
        credentials["user"] = user
    elif arguments.token is not None:
        credentials["token"] = arguments.token
    try:
        client = client_factory(
            arguments.node, timeout=arguments.timeout, cacert=arguments.cacert, **credentials
        )
    except (OSError, ssl.SSLError) as error:  # the client only reads the CA file
        raise _FileProblem(
            f"{arguments.cacert}: cannot use the CA certificate: {getattr(error, 'strerror', None) or error}"
        ) from None
    with client:
        command = arguments.command
        if command == "get":
            stdout.write(client.get(arguments.key).data)
            stdout.flush()
        elif command == "put":
            if arguments.value == "-":
                value: bytes | str = stdin.read()
            else:
                value = arguments.value
            version = client.put(
                arguments.key,
                value,
                content_type=arguments.content_type,
                ttl=arguments.ttl,
                if_match=arguments.if_match,
                if_none_match=arguments.if_none_match,
            )
            _line(stdout, version)
        elif command == "delete":
            client.delete(arguments.key, if_match=arguments.if_match)
        elif command == "list":
            page_size = min(arguments.limit or 1000, 1000)
            for count, key in enumerate(client.keys(arguments.prefix, page_size=page_size), start=1):
                _line(stdout, key)
                if count == arguments.limit:
                    break
        elif command == "watch":
            _watch(client, arguments, stdout, stderr)
        elif command == "snapshot":
            _snapshot(client, arguments, stdout)
        elif command == "member":
            _member(client, arguments, stdout)
        elif command == "token":
            _line(stdout, json.dumps(client.token()))
        else:
            _line(stdout, json.dumps(client.cluster(), indent=2))


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    stdin: Optional[BinaryIO] = None,
    stdout: Optional[BinaryIO] = None,
    stderr: Optional[TextIO] = None,
    environ: Optional[Mapping[str, str]] = None,
    client_factory: Callable[..., Client] = Client,
    ask: Callable[[str], str] = getpass.getpass,
) -> int:
    """
    Run C{kvctl} with the command-line arguments C{argv}.

    @param client_factory: makes the client from the node's URL,
        C{timeout=} seconds, C{cacert=} (a CA file or C{None}) and the
        C{user=} or C{token=} given, as L{Client} does (another client,
        such as a scripted one in tests, must also be a context manager).
    @param ask: prompts for a password without echoing it.
    @return: the exit status.
    """
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout.buffer if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ
    parser = _parser(environ.get("KVCTL_NODE") or DEFAULT_URL, environ.get("KVCTL_CACERT") or None)
    try:
        with contextlib.redirect_stderr(stderr):
            arguments = parser.parse_args(argv)
    except SystemExit as exit:
        return int(exit.code or 0)

    def fail(message: str, status: int) -> int:
        print(f"kvctl: {message}", file=stderr)
        return status

    if arguments.command == "passwd":
        text_in = io.TextIOWrapper(stdin, encoding="utf-8")
        text_out = io.StringIO()
        try:
            status = passwd.main(text_in, text_out, stderr, ask)
        finally:
            text_in.detach()
        stdout.write(text_out.getvalue().encode("ascii"))
        stdout.flush()
        return status

    try:
        _run(arguments, stdin, stdout, stderr, client_factory, ask)
    except KVError as error:
        return fail(f"{error.message} ({error.status})", EXIT_REFUSED)
    except ConfigError as error:
        return fail(str(error), EXIT_USAGE)
    except _FileProblem as error:
        return fail(str(error), EXIT_FILE)
    except ssl.SSLError as error:
        # also a ValueError: the node was reached, but not trusted
        return fail(f"cannot reach {arguments.node} over TLS: {error.reason or error}", EXIT_UNREACHABLE)
    except ValueError as error:
        return fail(str(error), EXIT_USAGE)
    except (OSError, TimeoutError) as error:
        if isinstance(error, BrokenPipeError):
            return 0
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        return fail(f"cannot reach {arguments.node}: {reason}", EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
