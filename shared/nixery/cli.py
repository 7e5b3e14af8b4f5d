"""The ``nixery`` command. Flags override the environment variables of the same meaning."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from nixery import config, logs
from nixery.errors import BadOutput, ConfigError
from nixery.pipeline.exports import FORMATS, Output, write_archive

# flag -> environment variable
_FLAGS = {
    "--port": "PORT",
    "--host": "NIXERY_HOST",
    "--storage-path": "STORAGE_PATH",
    "--web-dir": "WEB_DIR",
    "--channel": "NIXERY_CHANNEL",
    "--pkgs-repo": "NIXERY_PKGS_REPO",
    "--pkgs-path": "NIXERY_PKGS_PATH",
    "--nix-timeout": "NIX_TIMEOUT",
    "--popularity-url": "NIX_POPULARITY_URL",
    "--layer-budget": "NIXERY_LAYER_BUDGET",
}
# The flags of `nixery build`: where packages come from and how they are built.
_BUILD_FLAGS = ("--storage-path", "--channel", "--pkgs-repo", "--pkgs-path", "--nix-timeout",
                "--popularity-url", "--layer-budget")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nixery", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run registry and builder locally, in one process")
    for flag, variable in _FLAGS.items():
        serve.add_argument(flag, help=f"overrides {variable}")
    serve.add_argument("--log-level", default="INFO")
    pop = commands.add_parser(
        "popcount", help="compute popularity data for a package set (for NIX_POPULARITY_URL)"
    )
    pop.add_argument("pkgs_path", type=Path, help="a package set: a directory with default.nix")
    pop.add_argument("-o", "--output", type=Path, help="the JSON file to write (default: stdout)")
    pop.add_argument("--timeout", type=int, default=600, help="seconds any one build may run")
    pop.add_argument(
        "--store",
        help="read references from this binary cache (e.g. https://cache.nixos.org) "
        "instead of building the set",
    )
    pop.add_argument("--log-level", default="INFO")
    gc = commands.add_parser(
        "gc", help="delete what no recently used image needs (reports only, unless --apply)"
    )
    gc.add_argument(
        "--max-age", type=float,
        help="days an image is kept after its last pull by tag (default: NIXERY_GC_MAX_AGE, 30)",
    )  # fmt: skip
    gc.add_argument("--apply", action="store_true", help="delete; without it, only report")
    gc.add_argument("--log-level", default="INFO")
    build = commands.add_parser(
        "build",
        help="build an image and write it to a file (OCI archive or docker-archive), "
        "the same image a registry would serve for its name",
    )
    build.add_argument("image", help="NAME[:TAG], as it would be pulled (e.g. shell/hello)")
    build.add_argument(
        "-o", "--output", required=True,
        help="the file to write (a new or regular file, not in the storage), or - for stdout",
    )  # fmt: skip
    build.add_argument("--format", choices=FORMATS, default="oci",
                       help="oci (an OCI image layout in a tar) or docker-archive")  # fmt: skip
    for flag in _BUILD_FLAGS:
        build.add_argument(flag, help=f"overrides {_FLAGS[flag]}")
    build.add_argument("--log-level", default="INFO")
    commands.add_parser(
        "hash-password",
        help="hash a password for NIXERY_AUTH_USERS (read from stdin, or asked for)",
    )
    args = parser.parse_args(argv)
    if args.command == "popcount":
        return _popcount(args)
    if args.command == "hash-password":
        return _hash_password()
    if args.command in ("build", "gc"):
        logs.setup(args.log_level)
        try:
            return _build(args) if args.command == "build" else _gc(args)
        except ConfigError as e:
            print(f"nixery {args.command}: configuration error: {e}", file=sys.stderr)
            return 2

    env = _with_flags(args, _FLAGS)
    logs.setup(args.log_level)
    from nixery.local.app import serve as run

    try:
        run(config.local_settings(env))  # returns only when the server stops
    except ConfigError as e:
        print(f"nixery: configuration error: {e}", file=sys.stderr)
        return 2
    return 0


def _with_flags(args: argparse.Namespace, flags: Iterable[str]) -> dict[str, str]:
    """The environment, with the variables the given flags override."""
    env = dict(os.environ)
    for flag in flags:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            env[_FLAGS[flag]] = value
    return env


def _build(args: argparse.Namespace) -> int:
    """Builds as `nixery serve` would (same settings, same pipeline, so the same digests) and
    writes the image to a file or stdout. Without a storage path, blobs and state live in a
    temporary directory; with one, its layer cache is reused (and `nixery serve` may serve it).
    Where it writes is checked first, so that a mistake there costs no build."""
    import tempfile

    env = _with_flags(args, _BUILD_FLAGS)
    with tempfile.TemporaryDirectory(prefix="nixery-build-") as scratch:
        env.setdefault("STORAGE_PATH", scratch)
        settings = config.local_settings(env)
        try:
            output = Output.check(args.output, settings.storage_path, settings.state_path)
        except BadOutput as e:
            print(f"nixery build: {e}", file=sys.stderr)
            return 2
        try:
            return _build_into(output, args, settings)
        except BadOutput as e:  # the target became something else during the build
            print(f"nixery build: {e}", file=sys.stderr)
            return 2
        finally:
            output.discard()


def _build_into(output: Output, args: argparse.Namespace, settings: config.LocalSettings) -> int:
    """``_build`` once the output is known good: its imports are the pipeline's and Nix's,
    which a mistake in ``-o`` need not wait for."""
    from nixery.errors import BuildError, NixeryError, StillBuilding, os_cause
    from nixery.local.app import local_service
    from nixery.oci.manifests import OCI_INDEX, OCI_MANIFEST
    from nixery.request import Tag, parse_digest, parse_name, parse_reference

    name, _, tag = args.image.partition(":")
    try:
        platforms = settings.serve.platforms
        request = parse_name(name, settings.serve.max_packages, platforms)
        reference = parse_reference(tag or "latest")
        if not isinstance(reference, Tag):
            print("nixery build: name the image by tag, not by digest", file=sys.stderr)
            return 2
        service = local_service(settings)
        # An OCI archive holds the index of a multi-platform image; a docker-archive,
        # which cannot, the default platform's image.
        accept = [OCI_INDEX, OCI_MANIFEST] if args.format == "oci" else [OCI_MANIFEST]
        print(f"nixery build: building {name}:{reference.name}", file=sys.stderr)
        while True:
            try:
                manifest = service.manifest(request, reference, accept)
                break
            except StillBuilding:
                continue  # the build goes on; wait for it again
    except NixeryError as e:
        print(f"nixery build: {e.message}", file=sys.stderr)
        log = (e.detail or {}).get("log") if isinstance(e, BuildError) else None
        if isinstance(log, str):
            print(log, file=sys.stderr)
        return 1
    children = [m for d in manifest.children() if (m := service.manifest_by_digest(d))]
    try:
        with output.open() as out:
            write_archive(out, args.format, manifest, f"{name}:{reference.name}",
                          service.open_blob, lambda d: service.blob(parse_digest(d)).size,
                          children)  # fmt: skip
    except OSError as e:  # a full disk, a closed pipe
        print(f"nixery build: cannot write {args.output!r}: {os_cause(e)}", file=sys.stderr)
        return 1
    where = "stdout" if output.target is None else repr(output.target)
    print(f"nixery build: wrote {args.format} to {where} (manifest {manifest.digest})",
          file=sys.stderr)  # fmt: skip
    return 0


def _gc(args: argparse.Namespace) -> int:
    """Collects in the mode the environment configures, as `nixery serve` or the functions
    would read it."""
    import time

    from nixery.ports import BlobInventory, Inventory
    from nixery.service.gc import collect

    env = config.Env()
    if (env.get("NIXERY_STORAGE_BACKEND") or "filesystem") == "gcs":
        from nixery.gcp.clients import bucket, firestore_database
        from nixery.gcp.firestore_state import FirestoreInventory
        from nixery.gcp.gcs_blob_store import GcsBlobStore
        from nixery.gcp.settings import collector_settings

        collector = collector_settings(days=args.max_age)
        settings = collector.gc
        inventory: Inventory = FirestoreInventory(firestore_database(collector.gcp))
        blobs: BlobInventory = GcsBlobStore(bucket(collector.gcp), signer=None, url_ttl=60)
        checkouts = []
    else:
        from nixery.local.file_blob_store import FileBlobStore
        from nixery.local.sqlite_state import SqliteDatabase, SqliteInventory
        from nixery.sources.checkouts import Checkouts

        settings = config.gc_settings(env, args.max_age)
        local = config.local_settings(os.environ)
        inventory = SqliteInventory(SqliteDatabase(local.state_path))
        blobs = FileBlobStore(local.storage_path)
        source = local.source
        checkouts = [Checkouts(source.cache_dir / kind, source.keep_checkouts,
                               source.checkout_busy) for kind in ("git", "channel")]  # fmt: skip
    collect(inventory, blobs, max_age=settings.max_age, grace=settings.grace,
            failure_ttl=settings.failure_ttl, now=time.time(), apply=args.apply)  # fmt: skip
    if args.apply:
        for kept in checkouts:
            if kept.root.is_dir():
                kept.prune()
    return 0


def _hash_password() -> int:
    from nixery.http.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("nixery hash-password: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("nixery hash-password: an empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _popcount(args: argparse.Namespace) -> int:
    from nixery.nix.popularity import popcount

    logs.setup(args.log_level)
    try:
        counts = popcount(args.pkgs_path, args.timeout, args.store)
    except RuntimeError as e:
        print(f"nixery popcount: {e}", file=sys.stderr)
        return 1
    text = json.dumps(counts, indent=0, sort_keys=True) + "\n"
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
