"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.errors import ErrorBody

router = APIRouter(tags=["health"])


class Ready(BaseModel):
    status: str
    checks: dict[str, str]


class NotReady(ErrorBody):
    checks: dict[str, str]


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: database reachable, blob store writable",
    response_model=Ready,
    responses={503: {"model": NotReady, "description": "not ready, with the failed checks"}},
)
async def readyz(request: Request) -> JSONResponse:
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
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {"detail": "The service is not ready.", "code": "not_ready", "checks": checks},
        status_code=503,
    )
