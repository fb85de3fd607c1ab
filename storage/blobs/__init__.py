"""Content-addressed blob stores. `BlobStore` is the contract; `filesystem` the default backend."""

from storage.blobs.base import BlobStore, PutResult
from storage.blobs.filesystem import FilesystemBlobStore

__all__ = ["BlobStore", "FilesystemBlobStore", "PutResult"]
