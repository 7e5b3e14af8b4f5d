"""Cold build and warm pull of one image from a local registry, with skopeo.

    .venv/bin/python -m bench.pull [IMAGE] [--runs N] [--smoke]

Cold: fresh storage and the image's store paths deleted from the Nix store first, so the
time covers evaluation, the Nix build, layering, archiving and the pull. Warm: the same
image pulled again into a fresh directory (manifest and blobs cached). Prints medians.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.lib.harness import ENV, command_parser, parse_args, skopeo_copy
from tests.helpers.registries import Registry


def pull(host: str, image: str, dest: Path) -> float:
    return skopeo_copy(f"docker://{host}/{image}", f"oci:{dest}:x")


def delete_from_store(image_paths: list[str], strict: bool = True) -> None:
    """Deletes the image's store paths, and everything referring to them, so that Nix must
    build them again. Only unrooted paths (garbage) can go; the check below says if not: an
    error for a measurement, a warning for a smoke run (a builder killed elsewhere, e.g. by a
    test, leaves GC roots on paths every image shares)."""
    referrers = subprocess.run(
        ["nix-store", "--query", "--referrers-closure", *image_paths],
        capture_output=True, text=True, env=ENV, check=True,
    ).stdout.split()  # fmt: skip
    deleted = subprocess.run(
        ["nix-store", "--delete", *referrers], env=ENV, capture_output=True, text=True
    )
    if any(Path(p).exists() for p in image_paths):
        message = (
            "could not delete the image's store paths: something holds them alive (a GC root, "
            f"or a running build or process; see `nix-store --query --roots`):\n{deleted.stderr}"
        )
        if strict:
            raise RuntimeError(message)
        print(f"warning: {message}\nthe cold runs below are not cold", flush=True)


def store_paths(oci_dir: Path) -> list[str]:
    """The store paths in the pulled image, read from its layers' file names."""
    paths = set()
    for blob in (oci_dir / "blobs" / "sha256").iterdir():
        if blob.stat().st_size > 1000:
            listing = subprocess.run(
                ["tar", "-tzf", str(blob)], capture_output=True, text=True, check=False
            ).stdout.split()
            parts = (n.split("/") for n in listing)
            paths |= {
                f"/nix/store/{p[2]}"
                for p in parts
                if p[:2] == ["nix", "store"] and p[2:3] != [""] and len(p) > 2
            }
    return sorted(p for p in paths if p.startswith("/nix/store/") and Path(p).exists())


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("image", nargs="?", default="shell/hello")
    parser.add_argument("--runs", type=int, default=5)
    args = parse_args(parser, runs=1)
    work = Path(tempfile.mkdtemp(prefix="nixery-bench-"))
    cold, warm = [], []
    try:
        for run in range(args.runs + 1):
            registry = Registry(work / f"storage{run}").start()
            try:
                seconds = pull(registry.host, args.image, work / f"cold{run}")
                if run:  # run 0 only finds the image's store paths for the next ones
                    cold.append(seconds)
                    warm.append(pull(registry.host, args.image, work / f"warm{run}"))
            finally:
                registry.stop()
            delete_from_store(store_paths(work / f"cold{run}"), strict=not args.smoke)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"image {args.image}, {args.runs} runs, skopeo copy to oci: on 127.0.0.1")
    print(
        f"cold build + pull: median {statistics.median(cold):.2f}s "
        f"(runs: {', '.join(f'{t:.2f}' for t in cold)})"
    )
    print(
        f"warm pull:         median {statistics.median(warm):.2f}s "
        f"(runs: {', '.join(f'{t:.2f}' for t in warm)})"
    )


if __name__ == "__main__":
    main()
