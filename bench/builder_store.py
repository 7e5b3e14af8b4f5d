"""The builder's Nix store and memory over distinct builds, as the builder image runs them.

    .venv/bin/python -m bench.builder_store [--smoke] [--builds 20] [--limit 20M]

Builds the builder image (scripts/build-builder-image.sh; in smoke mode only if it is
missing), then runs it as the tests do (tests/helpers/emulators.py's ContainerBuilderRegistry:
the registry function against the emulators, the builder in its container with Nix 2.26),
twice in turns: without a store limit (NIXERY_STORE_LIMIT=0), and with --limit. Each run
pulls the same --builds distinct images of the demo set (one package each, so that their
closures overlap as real images' do) through the registry function, and after each build
reads, inside the container (bench/lib/store_probe.py): the store's size on disk (`du` of
/nix/store), the sum of its paths' NAR sizes (what the limit counts), its number of paths,
and the builder's memory (the RSS and the peak RSS of its gunicorn processes). Prints a
table per run and a summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from bench.lib.harness import command_parser, parse_args
from tests.helpers.clients import podman_env
from tests.helpers.emulators import ContainerBuilderRegistry, Emulators
from tests.helpers.registries import REPO

IMAGES = [
    "hello", "zlib", "libffi", "expat", "ncurses", "readline", "pcre2", "oniguruma",
    "openssl", "curl", "perl", "git", "gitminimal", "python3", "htop", "vim", "jq",
    "ripgrep", "1password", "python3packages.numpy", "python3packages.requests",
]  # fmt: skip
# Run inside the container, fed on its standard input: store bytes and paths, builder memory.
STORE_PROBE = Path(__file__).parent / "lib" / "store_probe.py"


def image(tag: str, rebuild: bool) -> str:
    exists = subprocess.run(["podman", "image", "exists", tag], env={**os.environ, **podman_env()})
    if rebuild or exists.returncode != 0:
        subprocess.run([str(REPO / "scripts" / "build-builder-image.sh"), tag], check=True)
    return tag


def probe(reg: ContainerBuilderRegistry) -> dict[str, int]:
    with STORE_PROBE.open() as source:
        out = subprocess.run(
            ["podman", "exec", "--interactive", reg.container, "/venv/bin/python", "-"],
            stdin=source, env={**os.environ, **podman_env()}, capture_output=True, text=True,
            check=True,
        ).stdout  # fmt: skip
    data: dict[str, int] = json.loads(out)
    return data


# One image built, and the probe's figures after it.
Row = tuple[str, dict[str, int]]


def run(emulators: Emulators, tag: str, images: list[str], limit: str, work: Path) -> list[Row]:
    reg = ContainerBuilderRegistry(work, emulators, tag, NIXERY_STORE_LIMIT=limit)
    reg.start()
    rows: list[Row] = []
    try:
        for name in images:
            r = reg.get(f"/v2/{name}/manifests/latest", timeout=600)
            if r.status_code != 200:
                raise SystemExit(f"{name}: {r.status_code} {r.text}\n{reg.builder_log.read_text()}")
            rows.append((name, probe(reg)))
    finally:
        reg.stop()
    return rows


def mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--builds", type=int, default=20)
    parser.add_argument("--limit", default="20M")
    parser.add_argument("--image", default="localhost/nixery-builder:bench")
    args = parse_args(parser, builds=2)
    tag = image(args.image, rebuild=not args.smoke)
    images = IMAGES[: args.builds]
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        emulators = Emulators(Path(tmp) / "emulators")
        try:
            results = {
                limit: run(emulators, tag, images, limit, Path(tmp) / f"run-{limit}")
                for limit in ("0", args.limit)
            }
        finally:
            emulators.stop()
    for limit, rows in results.items():
        print(f"\nNIXERY_STORE_LIMIT={limit} ({'none' if limit == '0' else 'NAR bytes'})")
        print(f"{'#':>3} {'image':<26} {'store MB':>9} {'NAR MB':>7} {'paths':>6} "
              f"{'RSS MB':>7} {'peak MB':>8}")  # fmt: skip
        for i, (name, row) in enumerate(rows, 1):
            print(f"{i:3} {name:<26} {mb(row['du']):>9} {mb(row['nar']):>7} "
                  f"{row['paths']:6} {mb(row['rss']):>7} {mb(row['peak']):>8}")  # fmt: skip
    print("\nsummary (over all builds):")
    for limit, rows in results.items():
        rss, peak = max(r["rss"] for _, r in rows), max(r["peak"] for _, r in rows)
        store = max(r["du"] for _, r in rows)
        print(f"  limit {limit:>4}: store max {mb(store)} MB, last {mb(rows[-1][1]['du'])} MB; "
              f"builder RSS max {mb(rss)} MB, peak {mb(peak)} MB")  # fmt: skip


if __name__ == "__main__":
    main()
