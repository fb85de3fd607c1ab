"""The service on the S3 backend, end to end: a real server process with ARTIFACTS_BLOB_BACKEND=s3
against moto's S3 server on loopback, on both databases. Creates (JSON and multipart), raw
uploads larger than a part (the multipart path), dedupe across artifacts, ranged and conditional
downloads, readiness, deletion, then the CLI's gc and fsck reading the same bucket."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.s3 import S3_TEST_PART_SIZE, MotoServer
from tests.support.servers import ROOT, start_server

PART = S3_TEST_PART_SIZE


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def keys(moto: MotoServer, bucket: str) -> set[str]:
    listing = moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"] for item in listing}


def test_the_service_on_s3(
    tmp_path: Path, database_url: str, s3_env: dict[str, str], moto_server: MotoServer
) -> None:
    bucket = s3_env["ARTIFACTS_S3_BUCKET"]
    env = {**s3_env, "ARTIFACTS_DATA_DIR": str(tmp_path / "data")}
    env["ARTIFACTS_DATABASE_URL"] = database_url
    server = start_server(tmp_path / "data", database_url=database_url, env=s3_env)
    big = random.Random(1).randbytes(5 * PART + 321)
    try:
        with server.client() as http:
            assert http.get("/readyz").status_code == 200
            made = http.post(
                "/artifacts",
                json={"workflow_id": "wf", "artifact_type": "text", "title": "a", "content": "hi"},
            )
            assert made.status_code == 201, made.text
            first = made.json()["id"]
            form = {"workflow_id": "wf", "artifact_type": "other", "title": "big"}
            made = http.post("/artifacts", data=form, files={"file": ("big.bin", big)})
            assert made.status_code == 201, made.text
            second = made.json()["id"]
            # The same bytes again, as a raw upload replacing the first artifact's content.
            replaced = http.post(
                f"/artifacts/{first}/upload",
                content=big,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert replaced.status_code == 200, replaced.text
            assert replaced.json()["content_hash"] == sha(big)

            got = http.get(f"/artifacts/{second}/download")
            assert got.status_code == 200 and got.content == big
            etag = got.headers["etag"]
            part = http.get(
                f"/artifacts/{second}/download", headers={"Range": f"bytes={PART - 5}-{PART + 5}"}
            )
            assert part.status_code == 206 and part.content == big[PART - 5 : PART + 6]
            again = http.get(f"/artifacts/{second}/download", headers={"If-None-Match": etag})
            assert again.status_code == 304
            assert http.delete(f"/artifacts/{second}").status_code in (200, 204)
            assert http.get(f"/artifacts/{second}/download").status_code == 404
    finally:
        server.stop()
    blob_keys = {k for k in keys(moto_server, bucket) if k.startswith("store/sha256/")}
    assert blob_keys == {
        f"store/sha256/{d[:2]}/{d[2:4]}/{d}" for d in (sha(b"hi"), sha(big))
    }  # one object for the two artifacts holding `big`; nothing left in staging
    assert keys(moto_server, bucket) == blob_keys

    r = cli({**env, "ARTIFACTS_VERSION_RETENTION": "0"}, "gc", "--grace", "0", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["versions_expired"] == 1  # first's version 1, "hi": no replaced one is kept
    assert report["blobs_deleted"] == [sha(b"hi")]  # so unreferenced
    r = cli(env, "fsck", "--verify-data", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["errors"] == []
    assert keys(moto_server, bucket) == {f"store/sha256/{sha(big)[:2]}/{sha(big)[2:4]}/{sha(big)}"}


def test_s3_without_a_bucket_is_refused_at_start(tmp_path: Path) -> None:
    env = {"ARTIFACTS_BLOB_BACKEND": "s3", "ARTIFACTS_DATA_DIR": str(tmp_path)}
    r = cli(env, "fsck")
    assert r.returncode != 0
    assert "ARTIFACTS_S3_BUCKET" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unreachable_object_store_answers_503(tmp_path: Path, database_url: str) -> None:
    from tests.support.servers import free_port

    env = {
        "ARTIFACTS_BLOB_BACKEND": "s3",
        "ARTIFACTS_S3_BUCKET": "gone",
        "ARTIFACTS_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
        "ARTIFACTS_S3_MAX_ATTEMPTS": "1",
    }
    server = start_server(tmp_path / "data", database_url=database_url, env=env)
    try:
        with server.client() as http:
            assert http.get("/readyz").status_code == 503
            made = http.post(
                "/artifacts",
                json={"workflow_id": "wf", "artifact_type": "text", "title": "a", "content": "x"},
            )
            assert made.status_code == 503, made.text
            assert "object store" in made.text
    finally:
        server.stop()
