"""The committed OpenAPI document is what the app generates, and the server serves it."""

import json
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import openapi as openapi_script  # noqa: E402


def test_committed_openapi_matches_the_app():
    committed = (ROOT / "openapi" / "openapi.json").read_text()
    assert committed == openapi_script.generate(), "run: .venv/bin/python scripts/openapi.py"


def test_served_schema_is_the_committed_one(server):
    served = httpx.get(f"{server.url}/schema/openapi.json").json()
    assert served == json.loads((ROOT / "openapi" / "openapi.json").read_text())


def test_every_contract_route_is_documented():
    doc = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    paths = doc["paths"]
    assert set(paths["/artifacts"]) == {"get", "post"}
    assert set(paths["/artifacts/{artifact_id}"]) == {"get", "put", "delete"}
    assert set(paths["/artifacts/{artifact_id}/content"]) == {"get"}
    assert set(paths["/artifacts/{artifact_id}/upload"]) == {"post"}
    assert set(paths["/artifacts/{artifact_id}/download"]) == {"get", "head"}
    assert {"/healthz", "/readyz"} <= set(paths)
