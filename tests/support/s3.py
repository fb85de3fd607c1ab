"""S3 for tests: moto's server in a process of its own on a loopback port."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port

S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
S3_TEST_PART_SIZE = 64 * 1024  # small parts so multipart paths run on small blobs


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]

    @functools.cached_property
    def _client(self) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def client(self) -> Any:
        """A boto3 S3 client of the moto server (synchronous; for set-up and raw checks)."""
        return self._client

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(10)


def start_moto(log: Path) -> MotoServer:
    """moto's S3 server on 127.0.0.1 (parts down to 1 KiB accepted, so multipart uploads are
    testable with small blobs)."""
    port = free_port()
    env = {**os.environ, **S3_CREDENTIALS, "S3_UPLOAD_PART_MIN_SIZE": "1024"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited:\n{log.read_text()}")
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            return MotoServer(endpoint, process)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise RuntimeError(f"moto did not start:\n{log.read_text()}") from None
            time.sleep(0.1)
