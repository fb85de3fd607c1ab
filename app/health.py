"""Liveness and readiness (public routes: no scope)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from app.http import Answer, json_answer


@get("/healthz", opt={"statuses": (200,)}, sync_to_thread=False)
def healthz() -> Answer:
    return Answer(b'{"status":"ok"}')


@get("/readyz", opt={"statuses": (200, 503)})
async def readyz(request: Request[Any, Any, Any]) -> Answer:
    service = request.app.state.service
    checks: dict[str, str] = {}
    try:
        await service.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not ready", with the reason
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        await service.blobs.check_writable()
        checks["blobs"] = "ok"
    except Exception as exc:
        checks["blobs"] = f"error: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return json_answer({"status": "ready", "checks": checks})
    return json_answer(
        {"detail": "The service is not ready.", "code": "not_ready", "checks": checks}, 503
    )
