"""The Python client of workflow-artifacts: `ArtifactsClient` (sync) and `AsyncArtifactsClient`.

    from workflow_artifacts_client import ArtifactsClient

    with ArtifactsClient() as client:  # ARTIFACTS_URL and ARTIFACTS_API_KEY
        created = client.create("wf-1", "Findings", "# Findings\\n…", phase_id="discovery")
        client.upload(created.id, "report.pdf")
        client.download(created.id, "copy.pdf")

Depends on httpx only (and anyio, which httpx needs too). The `wfa` command
(workflow_artifacts_client.cli) ships with it.
"""

from workflow_artifacts_client._async import AsyncArtifactsClient
from workflow_artifacts_client._common import Retry
from workflow_artifacts_client._sync import ArtifactsClient
from workflow_artifacts_client.errors import (
    AmbiguousId,
    ApiError,
    ArtifactsError,
    BadRequest,
    ConfigurationError,
    Conflict,
    ConnectionFailed,
    DigestMismatch,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientStorage,
    NotFound,
    PreconditionFailed,
    RateLimited,
    ServerError,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationError,
)
from workflow_artifacts_client.models import (
    Artifact,
    ArtifactSummary,
    Changed,
    Content,
    Created,
    Downloaded,
    DownloadLink,
    Event,
    ImportJob,
    Lineage,
    LineageEdge,
    LineageNode,
    Phase,
    Uploaded,
    Version,
    Workflow,
    WorkflowSummary,
)

__version__ = "0.1.0"
__all__ = [
    "AmbiguousId",
    "ApiError",
    "Artifact",
    "ArtifactSummary",
    "ArtifactsClient",
    "ArtifactsError",
    "AsyncArtifactsClient",
    "BadRequest",
    "Changed",
    "ConfigurationError",
    "Conflict",
    "ConnectionFailed",
    "Content",
    "Created",
    "DigestMismatch",
    "DownloadLink",
    "Downloaded",
    "Event",
    "Forbidden",
    "IdempotencyKeyReused",
    "ImportJob",
    "InsufficientStorage",
    "Lineage",
    "LineageEdge",
    "LineageNode",
    "NotFound",
    "Phase",
    "PreconditionFailed",
    "RateLimited",
    "Retry",
    "ServerError",
    "Timeout",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "Uploaded",
    "ValidationError",
    "Version",
    "Workflow",
    "WorkflowSummary",
]
