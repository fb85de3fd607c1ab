"""Dependency providers: the store as the admitted caller's tenant sees it, and the settings.

Hot routes declare only `service`: Litestar resolves two or more dependencies in a task group,
measured at about 15% of a get."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency

from app.auth import caller_of
from app.settings import Settings
from storage.artifacts import ArtifactService

# What a handler parameter declares to be given them: `service: Service`, `settings: Config`.
Service = NamedDependency[ArtifactService]
Config = NamedDependency[Settings]


def service(request: Request[Any, Any, Any]) -> ArtifactService:
    store: ArtifactService = request.app.state.service
    return store.scoped(caller_of(request).tenant)


def settings(request: Request[Any, Any, Any]) -> Settings:
    return settings_of(request)


def settings_of(request: Request[Any, Any, Any]) -> Settings:
    value: Settings = request.app.state.settings
    return value
