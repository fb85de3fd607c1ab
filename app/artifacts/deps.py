"""Dependencies the artifact routes share: the service and the settings of this app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.settings import Settings
from storage.artifacts import ArtifactService


def get_service(request: Request) -> ArtifactService:
    service: ArtifactService = request.app.state.service
    return service


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Service = Annotated[ArtifactService, Depends(get_service)]
Config = Annotated[Settings, Depends(get_settings)]
