"""Registry state in one SQLite file: survives restarts, safe for the server's threads.

Every method reaches the database through one guard, which lets one thread at a time use
the shared connection and turns SQLite's failures outside the request (another process
holding the lock, a read-only file, a full disk, an I/O error, a damaged file) into
``DatabaseUnavailable`` naming the cause: answered 503 with Retry-After, never 500. It is
translated there once for every method, as distribution's base driver does for all
storage drivers, so no method translates anything itself.

One connection and its guard are shared by a class per port (``SqliteDatabase.ports``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from nixery.errors import DatabaseUnavailable
from nixery.oci.manifests import LayerBlob, Manifest
from nixery.ports import StatePorts
from nixery.records import (
    BuildReport,
    Failure,
    ImageRecord,
    ImageStatus,
    Published,
    decode_names,
    encode_names,
    with_answer,
)

# A report with its answer, when there is one.
_REPORTS = "SELECT r.report, a.answered FROM reports r LEFT JOIN report_answers a USING (key)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    digest TEXT PRIMARY KEY, media_type TEXT NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    key TEXT NOT NULL, media_type TEXT NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (key, media_type));
DROP TABLE IF EXISTS failures;  -- stored an HTTP status until 2026-12; failures are short-lived
CREATE TABLE IF NOT EXISTS failed_builds (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, message TEXT NOT NULL,
    detail TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS layers (
    key TEXT PRIMARY KEY, digest TEXT NOT NULL, diff_id TEXT NOT NULL, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS image_use (key TEXT PRIMARY KEY, used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    key TEXT PRIMARY KEY, started REAL NOT NULL, report TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reports_started ON reports (started);
CREATE TABLE IF NOT EXISTS report_answers (key TEXT PRIMARY KEY, answered REAL NOT NULL);
CREATE TABLE IF NOT EXISTS report_layers (
    key TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (digest, key));
CREATE TABLE IF NOT EXISTS package_sets (revision TEXT PRIMARY KEY, names TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS referrers (
    subject TEXT NOT NULL, digest TEXT NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (subject, digest, key));
CREATE TABLE IF NOT EXISTS generation (n INTEGER NOT NULL);  -- one row, moved by deletions
"""

log = logging.getLogger(__name__)

# Seconds a statement waits for another process's lock before it fails (sqlite3's default):
# a writer's lock lasts milliseconds, so a longer wait means a process holds it for good.
BUSY_TIMEOUT = 5.0

# SQLite's primary result codes that say the database cannot be used now, whatever the
# statement, and how the error says why. Any other failure is a bug here (a 500).
_CAUSES = {
    sqlite3.SQLITE_BUSY: "is locked by another process",
    sqlite3.SQLITE_LOCKED: "is locked by another process",
    sqlite3.SQLITE_READONLY: "is read-only",
    sqlite3.SQLITE_FULL: "cannot grow: the disk is full",
    sqlite3.SQLITE_IOERR: "cannot be read or written: an I/O error",
    sqlite3.SQLITE_CANTOPEN: "cannot be opened",
    sqlite3.SQLITE_CORRUPT: "is damaged",
    sqlite3.SQLITE_NOTADB: "is damaged: not a database",
    sqlite3.SQLITE_NOMEM: "cannot be used: out of memory",
}


class _Unavailable:
    """SQLite's failures outside the request raised as ``DatabaseUnavailable``."""

    def __enter__(self) -> None:
        pass

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, sqlite3.Error):
            # The extended code's low byte is the primary one; none where sqlite3 refused.
            cause = _CAUSES.get(getattr(error, "sqlite_errorcode", 0) & 0xFF)
            if cause is not None:
                log.warning("the state database %s: %s", cause, error)
                raise DatabaseUnavailable(f"the state database {cause}") from error


class _Guard(_Unavailable):
    """The one way into the database: one thread at a time on the shared connection, and
    SQLite's failures outside the request raised as ``DatabaseUnavailable``."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()

    def __enter__(self) -> None:
        self._mutex.acquire()

    def __exit__(self, *exception: Any) -> None:
        self._mutex.release()
        super().__exit__(*exception)


class _Generation:
    """``PublishedImages.generation`` for every process on the file: the ``generation`` row,
    which deletions move, read again only once SQLite's ``data_version`` says another
    connection wrote. Each server thread asks on a connection of its own, so that a pull
    shares no lock with the others."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self._path, self._timeout = path, busy_timeout
        self._local = threading.local()  # .connection, .version: the thread's
        self._seen = 0  # the highest generation read
        self._mutex = threading.Lock()

    def __call__(self) -> int:
        local = self._local
        with _Unavailable():
            if not hasattr(local, "connection"):
                local.connection = sqlite3.connect(
                    self._path, timeout=self._timeout, isolation_level=None
                )
                local.version = None
            version = local.connection.execute("PRAGMA data_version").fetchone()[0]
            if version != local.version:
                row = local.connection.execute("SELECT max(n) FROM generation").fetchone()
                with self._mutex:  # another thread may have read a later one meanwhile
                    self._seen = max(self._seen, row[0] or 0)
                local.version = version
        return self._seen


class SqliteDatabase:
    """The file, its connection and the guard every part below shares."""

    def __init__(
        self, path: Path, clock: Callable[[], float] = time.time, busy_timeout: float = BUSY_TIMEOUT
    ) -> None:
        """``busy_timeout``: seconds a statement waits for another process's lock."""
        self.clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self.generation = _Generation(path, busy_timeout)
        self.guard = _Guard()
        with self.guard:
            self.connection = sqlite3.connect(
                path, timeout=busy_timeout, check_same_thread=False, isolation_level=None
            )
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA synchronous=FULL")
            self.connection.executescript(_SCHEMA)
        try:
            with self.guard:
                # Images published before their use was recorded count as used from now.
                self.connection.execute(
                    "INSERT OR IGNORE INTO image_use SELECT DISTINCT key, ? FROM images", (clock(),)
                )
        except DatabaseUnavailable as e:
            # Left for the next start: a database that cannot be written now (read-only,
            # locked, on a full disk) still serves the images it holds.
            log.warning("%s: it serves the images it holds, and writes fail until it can be "
                        "written", e.message)  # fmt: skip

    def ports(self) -> StatePorts:
        """The state ports, each a view of this database."""
        return StatePorts(
            SqlitePublishedImages(self),
            SqliteLayerCache(self),
            SqliteBuildReports(self),
            SqlitePackageNames(self),
        )


class _Part:
    """One port's view of the database."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db, self._lock, self.clock = database.connection, database.guard, database.clock
        self._generation = database.generation

    def _next_generation(self) -> None:
        """In a deletion's transaction: what callers keep of the images is to be checked."""
        self._db.execute(
            "INSERT INTO generation SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM generation)"
        )
        self._db.execute("UPDATE generation SET n = n + 1")

    def _one(self, sql: str, *args: object) -> Any:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _manifest(self, digest: str) -> Manifest | None:
        row = self._one("SELECT media_type, body FROM manifests WHERE digest = ?", digest)
        return Manifest(row[0], bytes(row[1])) if row else None


class SqlitePublishedImages(_Part):
    def status(self, key: str) -> ImageStatus:
        with self._lock:
            rows = self._db.execute(
                "SELECT media_type, digest FROM images WHERE key = ?", (key,)
            ).fetchall()
            failed = self._db.execute(
                "SELECT kind, message, detail, at FROM failed_builds WHERE key = ?", (key,)
            ).fetchone()
        if rows:
            return Published(dict(rows))
        if failed:
            return Failure.decode(*failed)
        return None

    def manifest(self, digest: str) -> Manifest | None:
        return self._manifest(digest)

    def publish(
        self, key: str, manifests: list[Manifest], referrers: Sequence[Manifest] = ()
    ) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for m in [*manifests, *referrers]:
                self._db.execute(
                    "INSERT OR IGNORE INTO manifests VALUES (?, ?, ?)",
                    (m.digest, m.media_type, m.body),
                )
            for m in manifests:
                self._db.execute(
                    "INSERT OR REPLACE INTO images VALUES (?, ?, ?)", (key, m.media_type, m.digest)
                )
            # An image's referrers are those of its latest build (a rebuild signs anew), and
            # each image keeps its own row of a referrer it shares with another (`nixery gc`).
            self._db.execute("DELETE FROM referrers WHERE key = ?", (key,))
            for m in referrers:
                self._db.execute(
                    "INSERT INTO referrers VALUES (?, ?, ?)", (m.subject, m.digest, key)
                )
            self._db.execute("DELETE FROM failed_builds WHERE key = ?", (key,))
            self._db.execute("INSERT OR REPLACE INTO image_use VALUES (?, ?)", (key, self.clock()))

    def referrers(self, subject: str) -> list[Manifest]:
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT media_type, body FROM referrers JOIN manifests USING (digest) "
                "WHERE subject = ?",
                (subject,),
            ).fetchall()
        return [Manifest(media_type, bytes(body)) for media_type, body in rows]

    def touch(self, key: str, now: float) -> None:
        with self._lock:
            self._db.execute("UPDATE image_use SET used = max(used, ?) WHERE key = ?", (now, key))

    def forget(self, key: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM images WHERE key = ?", (key,))
            self._next_generation()

    def record_failure(self, key: str, failure: Failure) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO failed_builds VALUES (?, ?, ?, ?, ?)",
                (key, *failure.encode()),
            )

    def generation(self) -> int:
        return self._generation()


class SqliteLayerCache(_Part):
    def layer(self, layer_key: str) -> LayerBlob | None:
        row = self._one("SELECT digest, diff_id, size FROM layers WHERE key = ?", layer_key)
        return LayerBlob(*row) if row else None

    def record_layer(self, layer_key: str, layer: LayerBlob) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?)",
                (layer_key, layer.digest, layer.diff_id, layer.size),
            )


class SqliteBuildReports(_Part):
    def record_report(self, report: BuildReport) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO reports VALUES (?, ?, ?)",
                (report.key, report.started, report.encode()),
            )
            self._db.execute("DELETE FROM report_layers WHERE key = ?", (report.key,))
            self._db.executemany(
                "INSERT OR IGNORE INTO report_layers VALUES (?, ?)",
                [(report.key, layer.digest) for layer in report.layers],
            )

    def report(self, key: str) -> BuildReport | None:
        row = self._one(f"{_REPORTS} WHERE r.key = ?", key)
        return with_answer(BuildReport.decode(row[0]), row[1]) if row else None

    def record_answer(self, key: str, at: float) -> None:
        with self._lock, self._db:
            # A rebuild's answer replaces an earlier build's (with_answer tells them apart).
            self._db.execute(
                "INSERT INTO report_answers VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                "SET answered = excluded.answered WHERE answered < (SELECT started FROM reports "
                "WHERE reports.key = excluded.key)",
                (key, at),
            )

    def recent_reports(self, limit: int) -> list[BuildReport]:
        with self._lock:
            rows = self._db.execute(
                f"{_REPORTS} ORDER BY r.started DESC LIMIT ?", (limit,)
            ).fetchall()
        return [with_answer(BuildReport.decode(row[0]), row[1]) for row in rows]

    def layer_users(self, digest: str, limit: int) -> int:
        row = self._one(
            "SELECT count(*) FROM (SELECT 1 FROM report_layers WHERE digest = ? LIMIT ?)",
            digest, limit,
        )  # fmt: skip
        return int(row[0])


class SqlitePackageNames(_Part):
    def record_package_names(self, revision: str, names: Sequence[str]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO package_sets VALUES (?, ?)",
                (revision, encode_names(names)),
            )

    def package_names(self, revision: str) -> list[str] | None:
        row = self._one("SELECT names FROM package_sets WHERE revision = ?", revision)
        if row is None:
            return None
        return decode_names(row[0])


class SqliteInventory(_Part):
    """What `nixery gc` lists and deletes."""

    def manifest(self, digest: str) -> Manifest | None:
        return self._manifest(digest)

    def images(self) -> Iterable[ImageRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT images.key, group_concat(digest), coalesce(max(used), 0) FROM images "
                "LEFT JOIN image_use ON image_use.key = images.key GROUP BY images.key"
            ).fetchall()
            referrers: dict[str, list[str]] = {}
            for key, digest in self._db.execute("SELECT key, digest FROM referrers"):
                referrers.setdefault(key, []).append(digest)
        # An image's referrers live and go with it.
        return [
            ImageRecord(key, (*digests.split(","), *referrers.get(key, ())), used)
            for key, digests, used in rows
        ]

    def manifest_digests(self) -> Iterable[str]:
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT digest FROM manifests")]

    def layer_rows(self) -> Iterable[tuple[str, str]]:
        with self._lock:
            return list(self._db.execute("SELECT key, digest FROM layers"))

    def failures(self) -> Iterable[tuple[str, float]]:
        with self._lock:
            return list(self._db.execute("SELECT key, at FROM failed_builds"))

    def name_lists(self) -> Iterable[str]:
        # A row replaced gets a new rowid: the order of storing.
        with self._lock:
            rows = self._db.execute("SELECT revision FROM package_sets ORDER BY rowid DESC")
            return [revision for (revision,) in rows]

    def unfinished_reports(self) -> Iterable[tuple[str, float]]:
        with self._lock:
            return list(
                self._db.execute(
                    "SELECT key, started FROM reports WHERE json_extract(report, '$.status') "
                    "IN ('building', 'interrupted')"
                )
            )

    def delete(
        self,
        *,
        images: Iterable[str] = (),
        manifests: Iterable[str] = (),
        layers: Iterable[str] = (),
        failures: Iterable[str] = (),
        name_lists: Iterable[str] = (),
        reports: Iterable[str] = (),
    ) -> None:
        images = list(images)
        manifests = list(manifests)
        layers = list(layers)
        failures = list(failures)
        pages = [*images, *failures, *reports]
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if images or manifests or layers:  # a layer's row goes when its blob does
                self._next_generation()
            for table, column, keys in (
                ("images", "key", images), ("image_use", "key", images),
                ("referrers", "key", images),
                ("manifests", "digest", manifests), ("layers", "key", layers),
                ("failed_builds", "key", failures), ("package_sets", "revision", name_lists),
                # An image's or failure's page goes with it.
                ("reports", "key", pages), ("report_layers", "key", pages),
                ("report_answers", "key", pages),
            ):  # fmt: skip
                self._db.executemany(
                    f"DELETE FROM {table} WHERE {column} = ?", [(k,) for k in keys]
                )
