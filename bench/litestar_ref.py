"""The plain Litestar handler the metadata targets are measured against: one GET route returning
the same fixed small JSON as bench.reference's /json. Runs only in the bench-only environment
(scripts/bench-requirements.lock): `python -m uvicorn bench.litestar_ref:app`."""

from __future__ import annotations

from litestar import Litestar, get


@get("/json", sync_to_thread=False)
def fixed() -> dict[str, object]:
    return {"id": "0b7e6a52-5f0e-4c3e-9d2a-6f1d2c3b4a59", "status": "ok", "size_bytes": 1024}


app = Litestar([fixed])
