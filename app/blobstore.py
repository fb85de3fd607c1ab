"""The blob store the settings name, opened for the lifetime of a server or a CLI command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.settings import Settings
from storage.blobs import FilesystemBlobStore, MaintainedBlobStore


@asynccontextmanager
async def open_blob_store(settings: Settings) -> AsyncIterator[MaintainedBlobStore]:
    if settings.blob_backend == "filesystem":
        yield FilesystemBlobStore(settings.blob_dir)
        return
    from storage.blobs.s3 import S3BlobStore

    assert settings.s3_bucket is not None  # Settings refuses s3 without a bucket
    async with S3BlobStore(
        settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        addressing_style=settings.s3_addressing_style,
        part_size=settings.s3_part_size,
        max_attempts=settings.s3_max_attempts,
        checksums=settings.s3_checksums,
    ) as store:
        yield store
