"""Object storage: `ObjectStore` (S3 through boto3, or a local folder) and its factory."""

from __future__ import annotations

from server.storage.store import DEFAULT_CONTENT_TYPE, ObjectStore, StoredObject

__all__ = ["DEFAULT_CONTENT_TYPE", "ObjectStore", "StoredObject"]
