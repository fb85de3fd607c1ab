"""Dependencies the artifact routes share: the service and the settings of this app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth import caller_of
from app.settings import Settings
from storage.artifacts import ArtifactService

# `async def`, though they never await: FastAPI runs a plain `def` dependency in its thread
# pool, a thread hop per request for a dictionary lookup.


async def get_service(request: Request) -> ArtifactService:
    """The store as the authenticated caller's tenant sees it."""
    service: ArtifactService = request.app.state.service
    return service.scoped(caller_of(request).tenant)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Service = Annotated[ArtifactService, Depends(get_service)]
Config = Annotated[Settings, Depends(get_settings)]
