"""Blobs in a private Google Cloud Storage bucket, served by redirects to signed URLs.

Objects are named ``blobs/sha256/<hex>``. An upload becomes visible only when complete, and
``if_generation_match=0`` keeps an existing blob from being written again.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from google.api_core import exceptions
from google.cloud import storage

from .memory import keep
from .signing import SignedUrls


def object_name(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


class GcsBlobStore:
    def __init__(
        self,
        bucket: storage.Bucket,
        scratch: Path,
        *,
        signer: object | None,
        url_ttl: float,
        public_endpoint: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)
        self._signer = signer
        self._endpoint = public_endpoint
        self._urls = SignedUrls(self._sign, url_ttl)
        # Blobs never change, so a size once seen stays true; misses are not remembered.
        self._sizes: dict[str, int] = {}

    def size(self, digest: str) -> int | None:
        if (size := self._sizes.get(digest)) is not None:
            return size
        blob = self.bucket.get_blob(object_name(digest))
        if blob is None or blob.size is None:
            return None
        return keep(self._sizes, digest, blob.size)

    def put_file(self, digest: str, path: Path) -> None:
        try:
            if self.size(digest) is None:
                blob = self.bucket.blob(object_name(digest))
                blob.upload_from_filename(
                    str(path), content_type="application/octet-stream", if_generation_match=0
                )
        except exceptions.PreconditionFailed:
            pass  # another builder stored the same bytes first
        finally:
            path.unlink(missing_ok=True)

    def put_bytes(self, digest: str, data: bytes) -> None:
        if self.size(digest) is not None:
            return
        with contextlib.suppress(exceptions.PreconditionFailed):  # stored by another builder
            self.bucket.blob(object_name(digest)).upload_from_string(
                data, content_type="application/octet-stream", if_generation_match=0
            )

    def url(self, digest: str) -> str | None:
        return self._urls.url(object_name(digest))

    def open(self, digest: str) -> BinaryIO:
        return self.bucket.blob(object_name(digest)).open("rb")  # type: ignore[return-value]

    def _sign(self, name: str, ttl: timedelta) -> str:
        kwargs = {"api_access_endpoint": self._endpoint} if self._endpoint else {}
        return self.bucket.blob(name).generate_signed_url(
            version="v4", expiration=ttl, method="GET", credentials=self._signer, **kwargs
        )
