"""Blob storage for task inputs and result files, and the URLs that serve them.

``Storage`` is the protocol; ``LocalStorage`` keeps blobs in a directory (the default),
``S3Storage`` in an S3-compatible bucket, and ``create_storage(settings)`` picks one by
``OMNIFLASH_STORAGE_URL``.  ``UrlSigner`` makes the API's own signed download URLs;
``Storage.presigned_url`` the bucket's, where it has them.
"""

from __future__ import annotations

from omniflash.blobs.config import create_storage, parse_storage_url
from omniflash.blobs.local import LocalStorage
from omniflash.blobs.protocol import Storage, StorageUnavailable
from omniflash.blobs.s3 import S3Storage
from omniflash.blobs.signing import UrlSigner

__all__ = [
    "LocalStorage",
    "S3Storage",
    "Storage",
    "StorageUnavailable",
    "UrlSigner",
    "create_storage",
    "parse_storage_url",
]
