"""moto's S3 server on a free loopback port: a real S3 HTTP endpoint for the tests, no cloud involved.

Tests load this file by path (tests/ is not a package), as they load postgres.py, and use the `s3_endpoint`
fixture: {"url": ..., "process": ...}; stopping the process is how a test takes the endpoint down.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    port = _free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield {"url": f"http://127.0.0.1:{port}", "process": server}
    if server.poll() is None:
        server.terminate()
        server.wait(timeout=10)
    log.close()
