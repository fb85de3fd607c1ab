"""Content-addressed blob stores. `BlobStore` is the contract; `filesystem` the default backend,
`s3` the S3-compatible one (imported on use: it brings aiobotocore)."""

from storage.blobs.base import BlobStore, MaintainedBlobStore, PutResult
from storage.blobs.filesystem import FilesystemBlobStore

__all__ = ["BlobStore", "FilesystemBlobStore", "MaintainedBlobStore", "PutResult"]
