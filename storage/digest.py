"""sha256 digests and the place of each blob under a blob root.

    <root>/
      sha256/ab/cd/abcd…   one read-only file per blob, named by the 64-hex sha256 of its bytes
      tmp/<random>         staging files, on the same filesystem so that link() is atomic
      trash/<hex>          blobs garbage collection is deleting (restored at start-up if their
                           row survived a crash)
      quarantine/<hex>     blobs whose bytes no longer hash to their name (never served again)

Only a validated digest ever forms a path: no client input reaches the filesystem.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def is_sha256_hex(value: str) -> bool:
    return SHA256_HEX.fullmatch(value) is not None


def blob_relpath(digest: str) -> PurePosixPath:
    """`abcd…` -> `sha256/ab/cd/abcd…`; raises ValueError for anything but 64 lowercase hex."""
    if not is_sha256_hex(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return PurePosixPath("sha256", digest[:2], digest[2:4], digest)


def digest_of_relpath(relpath: PurePosixPath) -> str:
    """The inverse of blob_relpath; raises ValueError for a path that is not a blob's."""
    parts = relpath.parts
    if len(parts) != 4 or parts[0] != "sha256":
        raise ValueError(f"not a blob path: {relpath}")
    digest = parts[3]
    if blob_relpath(digest) != relpath:
        raise ValueError(f"not a blob path: {relpath}")
    return digest
