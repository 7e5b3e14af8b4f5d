"""Every call of ``GcsBlobStore`` to its bucket is bounded (a fake bucket that records the
arguments: the emulator cannot tell whether a timeout was passed)."""

from __future__ import annotations

from typing import Any, cast

from google.cloud import storage

from nixery.gcp.gcs_blob_store import GcsBlobStore


class _Bucket:
    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}

    def list_blobs(self, **kwargs: Any) -> list[object]:
        self.calls["list_blobs"] = kwargs
        return []

    def delete_blob(self, name: str, **kwargs: Any) -> None:
        self.calls["delete_blob"] = kwargs


def test_listing_and_deleting_blobs_take_the_timeout() -> None:
    bucket = _Bucket()
    store = GcsBlobStore(cast(storage.Bucket, bucket), signer=None, url_ttl=60, timeout=3)
    assert list(store.blobs()) == []
    store.delete("sha256:" + "0" * 64)
    for name in ("list_blobs", "delete_blob"):
        assert bucket.calls[name]["timeout"] == 3, name
        assert bucket.calls[name]["retry"] is not None, name
