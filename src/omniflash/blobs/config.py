"""Which backend ``Settings`` name: ``create_storage`` and the storage URL it reads.

>>> parse_storage_url("s3://videos/omniflash/prod")
('videos', 'omniflash/prod/')
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from omniflash.blobs.local import LocalStorage
from omniflash.blobs.protocol import Storage
from omniflash.blobs.s3 import MAX_PRESIGN_S, S3Storage

if TYPE_CHECKING:
    from omniflash.settings import Settings

__all__ = ["create_storage", "parse_storage_url"]


def parse_storage_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` as ``(bucket, prefix)``; the prefix ends in ``/`` unless empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"unsupported storage URL {url!r}: OMNIFLASH_STORAGE_URL takes s3://BUCKET/PREFIX"
        )
    prefix = parts.path.strip("/")
    return parts.netloc, prefix + "/" if prefix else ""


def create_storage(settings: Settings) -> Storage:
    """The storage ``settings.storage_url`` names: the data dir's ``blobs`` by default.

    Raises ``ValueError`` for settings that cannot work together (presigned results on a
    local directory, say), ``RuntimeError`` when the ``[s3]`` extra is missing, and
    ``StorageUnavailable`` when the bucket cannot be reached or used: a server stops
    before it starts rather than failing its first upload.
    """
    if not settings.storage_url:
        if settings.presign_results:
            raise ValueError(
                "OMNIFLASH_PRESIGN_RESULTS=1 needs an S3 bucket (OMNIFLASH_STORAGE_URL="
                "s3://BUCKET/PREFIX); a local directory has no presigned URLs"
            )
        if settings.s3_endpoint_url:
            raise ValueError(
                "OMNIFLASH_S3_ENDPOINT_URL is set but OMNIFLASH_STORAGE_URL is not: "
                "name the bucket with OMNIFLASH_STORAGE_URL=s3://BUCKET/PREFIX"
            )
        return LocalStorage(settings.blobs_dir)
    bucket, prefix = parse_storage_url(settings.storage_url)
    if settings.presign_results and settings.result_ttl_s > MAX_PRESIGN_S:
        raise ValueError(
            f"OMNIFLASH_PRESIGN_RESULTS=1 allows OMNIFLASH_RESULT_TTL up to {MAX_PRESIGN_S} s "
            f"(7 days, S3's limit for presigned URLs), not {settings.result_ttl_s}"
        )
    storage = S3Storage(bucket, prefix, endpoint_url=settings.s3_endpoint_url)
    try:
        storage.check()
    except BaseException:
        storage.close()
        raise
    return storage
