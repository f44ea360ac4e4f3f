# -*- test-case-name: tests.test_healthcheck -*-
"""
The container image's health check: exit 0 while the node answers C{200} on
C{/health}, 1 otherwise (with one line saying why).

    python -m twisted_kv.app.healthcheck [--config PATH --node ID]

Without arguments it checks the node that runs as process 1 (the container's
C{twistd kvnode}), whose options it reads from C{/proc/1/cmdline}: however
the node id and cluster file were given to the container (environment or
arguments), the check asks the node that runs.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

from twisted_kv.app.tap import Options
from twisted_kv.core.config import NodeConfig, format_address, load_config

#: Seconds to wait for the answer (the image's HEALTHCHECK allows 5).
TIMEOUT = 4.0

#: Where a node listening on every interface is asked.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def node_arguments(cmdline: bytes) -> list[str]:
    """
    The C{kvnode} options of a process's NUL-separated command line (as in
    C{/proc/PID/cmdline}): what follows C{kvnode}.

    @raise ValueError: if the command line runs no C{kvnode}.
    """
    words = [word.decode("utf-8", "surrogateescape") for word in cmdline.split(b"\0")]
    if words and words[-1] == "":
        words.pop()
    if "kvnode" not in words:
        raise ValueError("process 1 is not twistd kvnode")
    return words[words.index("kvnode") + 1:]


def health_url(node: NodeConfig) -> str:
    """
    The node's C{/health} URL, on the address it listens on (its loopback
    address when it listens on every interface).
    """
    host = _LOOPBACK.get(node.listen_host, node.listen_host)
    return f"http://{format_address(host, node.http_port)}/health"


def check(url: str, urlopen: Callable[..., Any] = urllib.request.urlopen) -> Optional[str]:
    """
    C{None} if C{url} answers C{200}, else what went wrong, in one line.
    """
    try:
        with urlopen(url, timeout=TIMEOUT) as reply:
            status = reply.status
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", "replace")
        return f"{url}: {error.code} {' '.join(body.split())}"
    except (OSError, ValueError) as error:
        return f"{url}: {error}"
    return None if status == 200 else f"{url}: {status}"


def main(
    argv: Optional[list[str]] = None,
    *,
    _cmdline: str = "/proc/1/cmdline",
    _urlopen: Callable[..., Any] = urllib.request.urlopen,
) -> int:
    """
    Check the node C{argv} (C{--config}, C{--node}) names, or by default
    the one process 1 runs; print why when it is not healthy.

    @return: the exit status: 0 healthy, 1 not.
    """
    arguments = sys.argv[1:] if argv is None else argv
    try:
        if not arguments:
            with open(_cmdline, "rb") as f:
                arguments = node_arguments(f.read())
        options = Options()
        options.parseOptions(arguments)
        node = load_config(options["config"]).node(options["node"])
    except (OSError, ValueError, SystemExit) as error:
        # ConfigError is a ValueError; Options ends bad command lines with SystemExit.
        problem = error.code if isinstance(error, SystemExit) else error
        print(f"healthcheck: {problem}", file=sys.stderr)
        return 1
    problem = check(health_url(node), _urlopen)
    if problem is not None:
        print(f"healthcheck: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
