# -*- test-case-name: tests.test_container -*-
"""
The deployment files work: L{tests/container/run.sh} builds the image from
the Dockerfile on a Debian 12 base it makes with mmdebstrap, runs
compose.yaml's three nodes with podman-compose and checks them (writes,
reads through another node, FTP through the published passive ports, a
stopped node, down + up).

It needs podman, podman-compose and mmdebstrap (C{.ci/run} installs them
where it can), the Debian archive and PyPI, and takes a few minutes (most
of it making the base and the image): it is skipped, saying why, without
them.  The script's output is kept in the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "container", "run.sh")

#: What the script needs on the PATH.
_TOOLS = ("podman", "podman-compose", "mmdebstrap", "curl")

#: Seconds the whole script may take (about 3 minutes here, 6 without its
#: cached base).
_LIMIT = 1200

#: The script's exit status when podman cannot run containers on this host.
_SKIPPED = 77


class ContainerTests(SynchronousTestCase):
    """
    The image and the Compose cluster, built and run with podman.
    """

    def test_compose_cluster(self) -> None:
        """
        C{tests/container/run.sh} passes.
        """
        missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
        if missing:
            raise SkipTest(
                f"the container test needs {', '.join(missing)}"
                " (apt install podman podman-compose mmdebstrap curl)"
            )
        result = subprocess.run(
            ["bash", _SCRIPT],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_LIMIT,
        )
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "run.log"), "w", encoding="utf-8") as log:
            log.write(result.stdout)
        if result.returncode == _SKIPPED:
            raise SkipTest(result.stdout.strip().splitlines()[-1])
        self.assertEqual(result.returncode, 0, f"tests/container/run.sh failed:\n{result.stdout}")
        self.assertIn(" PASSED\n", result.stdout)
