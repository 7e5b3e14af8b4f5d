"""Blobs in a Google Cloud Storage bucket, served by redirects: to signed URLs of a private
bucket, or, for a public mirror, to plain URLs under ``blob_url`` (the public bucket behind
Cloud CDN), which every cache on the way may keep, where signed URLs differ per signature.

Objects are named ``blobs/sha256/<hex>``. A writer streams a resumable upload to a staging
object (``staging/<random>``) and, once its bytes match the digest, copies it under the
digest's name with ``if_generation_match=0``, so a blob is never written over, and deletes
the staging object. Nothing is held whole in memory or on a local disk (on Cloud Run the
disk is memory); an abandoned staging object is left to the bucket's lifecycle rule. A blob
smaller than one upload chunk goes straight to its name in a single request. Either way
the blob is stored with ``Cache-Control: public, max-age=31536000, immutable``: its name is
its digest, so its bytes never change and any cache may keep it for a year.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, BinaryIO

from google.api_core import exceptions
from google.cloud.storage import Bucket
from google.cloud.storage.fileio import BlobWriter
from google.cloud.storage.retry import DEFAULT_RETRY

from nixery.blobs import Hasher, blob_path
from nixery.caches import BoundedCache
from nixery.errors import StorageUnavailable, Transient
from nixery.gcp.deadline import BACKEND_TIMEOUT, Deadline, bounded
from nixery.gcp.firestore_state import PUBLISHED_TTL
from nixery.gcp.signed_urls import SignedUrls, url_ttl_for
from nixery.records import StoredBlob

# Bytes per resumable-upload request: a multiple of 256 KiB, held in memory per writer.
UPLOAD_CHUNK = 16 << 20
STAGING = "staging/"
_TYPE = "application/octet-stream"
# Content-addressed, so never stale. Set on the final object's properties before the upload
# or the rewrite: a rewrite applies the destination's properties sent with it (rather than
# copying the staging object's), so the metadata is set on both paths alike.
CACHE_CONTROL = "public, max-age=31536000, immutable"


class GcsBlobWriter:
    def __init__(self, store: GcsBlobStore) -> None:
        self._store = store
        self._staging = store.bucket.blob(STAGING + uuid.uuid4().hex)
        self._upload: BlobWriter | None = None  # started once a chunk's worth has come
        self._buffer = bytearray()
        self._hash = Hasher()
        self._size = 0
        self._open = True
        self._staged = False  # the staging object exists

    def write(self, data: bytes | memoryview) -> int:
        assert self._open, "write after commit or cancel"
        self._hash.update(data)
        self._size += len(data)
        with self._store.deadline.translated():
            if self._upload is None:
                self._buffer += data
                if len(self._buffer) >= UPLOAD_CHUNK:
                    self._upload = self._staging.open(
                        "wb", chunk_size=UPLOAD_CHUNK, content_type=_TYPE, **self._store.calls
                    )
                    self._upload.write(bytes(self._buffer))
                    self._buffer = bytearray()
            else:
                self._upload.write(data)
        return len(data)

    def commit(self, digest: str) -> None:
        assert self._open, "commit after commit or cancel"
        self._hash.check(digest)
        # A large blob stored already needs neither its last chunk nor its copy; a small one
        # goes in one request, refused if it is stored, which costs what the check would.
        if self._upload is not None and self._store.size(digest) is not None:
            self.cancel()
            return
        final = self._store.bucket.blob(blob_path(digest))
        final.cache_control = CACHE_CONTROL
        final.content_type = _TYPE
        calls = self._store.calls
        try:
            with self._store.deadline.translated():
                if self._upload is None:
                    final.upload_from_string(
                        bytes(self._buffer), content_type=_TYPE, if_generation_match=0, **calls
                    )
                else:
                    self._upload.close()  # the staging object is complete
                    self._upload, self._staged = None, True
                    token: str | None = None
                    while True:  # a large copy may take several calls
                        token, _, _ = final.rewrite(
                            self._staging, token=token, if_generation_match=0, **calls
                        )
                        if token is None:
                            break
        except exceptions.PreconditionFailed:
            pass  # another builder stored the same bytes first
        finally:
            self.cancel()
        self._store.stored(digest, self._size)

    def cancel(self) -> None:
        if not self._open:
            return
        self._open = False
        self._buffer = bytearray()
        upload, self._upload = self._upload, None
        with contextlib.suppress(exceptions.GoogleAPICallError, OSError, ValueError, Transient):
            if upload is not None:
                # Ends the resumable session; no object remains. The library's call takes no
                # timeout, and a storage that stopped answering is a usual reason to cancel.
                self._store.deadline.call(upload.terminate)
            elif self._staged:
                self._staging.delete(**self._store.calls)


class GcsBlobStore:
    def __init__(
        self,
        bucket: Bucket,
        *,
        signer: object | None,
        url_ttl: float,
        public_endpoint: str | None = None,
        blob_url: str | None = None,
        timeout: float = BACKEND_TIMEOUT,
    ) -> None:
        """Every call gives up after about ``timeout`` seconds with ``StorageUnavailable``:
        the registry's reads (sizes, signed URLs) under a ``Deadline``, each request of the
        builder's uploads by the library's own timeout and a retry policy bounded alike (its
        default retries an unreachable service for two minutes)."""
        self.bucket = bucket
        self.deadline = Deadline("Cloud Storage", StorageUnavailable, timeout)
        # Passed to every call: a stalled request ends after ``timeout``, and so do retries.
        self.calls: dict[str, Any] = {
            "timeout": timeout,
            "retry": DEFAULT_RETRY.with_timeout(timeout),
        }
        self._signer = signer
        self._endpoint = public_endpoint
        self._blob_url = blob_url
        self._urls = SignedUrls(self._sign, url_ttl_for(signer, url_ttl))
        # A size once seen stays true while the blob exists, but `nixery gc` may delete one
        # that no image uses any more; misses are not remembered. All go when the state's
        # generation moves (its period), so that an answer from memory never rests on a size
        # older than that (docs/security.md).
        self._sizes: BoundedCache[int] = BoundedCache(clock=time.time, every=PUBLISHED_TTL)

    def writer(self) -> GcsBlobWriter:
        return GcsBlobWriter(self)

    def size(self, digest: str) -> int | None:
        return self._sizes.fetch(digest, lambda: self._read_size(digest))

    @bounded
    def _read_size(self, digest: str) -> int | None:
        blob = self.bucket.get_blob(blob_path(digest), **self.calls)
        return None if blob is None else blob.size

    def stored(self, digest: str, size: int) -> None:
        """Notes a blob that a writer of this store just stored, sparing a later lookup."""
        self._sizes.keep(digest, size)

    def intact(self, digest: str) -> bool:
        """Present means intact here: the writer checked the bytes against the digest before
        the object got its name, GCS checks each upload's checksum, and objects never change."""
        return self.size(digest) is not None

    def url(self, digest: str) -> str | None:
        if self._blob_url:
            return f"{self._blob_url}/{blob_path(digest)}"
        return self._signed_url(digest)

    @bounded
    def _signed_url(self, digest: str) -> str:
        return self._urls.url(blob_path(digest))

    def blobs(self) -> Iterator[StoredBlob]:
        for blob in self.bucket.list_blobs(prefix="blobs/sha256/", **self.calls):
            created = blob.time_created.timestamp() if blob.time_created else 0.0
            yield StoredBlob("sha256:" + blob.name.rsplit("/", 1)[1], blob.size or 0, created)

    def delete(self, digest: str) -> None:
        self._sizes.drop(digest)
        with contextlib.suppress(exceptions.NotFound):
            self.bucket.delete_blob(blob_path(digest), **self.calls)

    def open(self, digest: str) -> BinaryIO:
        blob = self.bucket.blob(blob_path(digest))
        return blob.open("rb", **self.calls)  # type: ignore[no-any-return]

    def _sign(self, name: str, ttl: timedelta) -> str:
        kwargs = {"api_access_endpoint": self._endpoint} if self._endpoint else {}
        url: str = self.bucket.blob(name).generate_signed_url(
            version="v4", expiration=ttl, method="GET", credentials=self._signer, **kwargs
        )
        return url
