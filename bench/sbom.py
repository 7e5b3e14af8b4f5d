"""What an image's SBOM costs: its size, and the build time it adds.

    .venv/bin/python -m bench.sbom [IMAGE] [--runs N] [--smoke]

Each run builds the image in a registry with fresh storage (its store paths are already in
the Nix store, so Nix only evaluates and reads the closure): the whole build's time is read
from the registry's log, and the SBOM is fetched as a client would. Making the SBOM from the
closure and the meta (what the build's `sbom` step does before storing two small blobs) is
timed in this process, on the same Nix build result. The package set's meta is gathered
during evaluation; what that adds is the time of evaluating the plan with and without its
`meta` list. Prints medians.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.lib.harness import ENV, command_parser, figure, parse_args
from nixery.nix.runner import Nix
from nixery.pipeline.sbom import image_sbom
from nixery.records import Revision
from nixery.request import parse_name
from nixery.sources.path import SOURCE_ID
from tests.helpers.registries import DEMO, DEMO_EVAL_ALLOW, OCI, REPO, Registry

PREPARE = REPO / "shared" / "nixery" / "prepare-image" / "default.nix"


def evaluate(packages: list[str], attribute: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--read-write-mode", str(PREPARE),
         "-A", attribute, "--argstr", "srcPath", str(DEMO),
         "--argstr", "packages", json.dumps(packages), "--argstr", "system", "x86_64-linux"],
        env=ENV, capture_output=True, check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("image", nargs="?", default="shell/git/htop")
    parser.add_argument("--runs", type=int, default=5)
    args = parse_args(parser, runs=1, image="hello")
    packages = list(parse_name(args.image).packages)
    work = Path(tempfile.mkdtemp(prefix="nixery-bench-sbom-"))
    sbom_s, build_s, sizes, components = [], [], set(), set()
    for run in range(args.runs + 1):  # run 0 builds the store paths
        registry = Registry(work / f"storage{run}").start()
        try:
            name = args.image
            digest = registry.get(f"/v2/{name}/manifests/latest", headers={"Accept": OCI}).headers[
                "Docker-Content-Digest"
            ]
            (referrer,) = registry.get(f"/v2/{name}/referrers/{digest}").json()["manifests"]
            artifact = registry.get(f"/v2/{name}/manifests/{referrer['digest']}").json()
            sbom = registry.get(f"/v2/{name}/blobs/{artifact['layers'][0]['digest']}").content
            log = registry.log()
        finally:
            registry.stop()
        if run:
            build_s.append(float(figure(r": published in ([0-9.]+)s", log)))
        sizes.add(len(sbom))
        components.add(len(json.loads(sbom)["components"]))
    nix = Nix(PREPARE.parent, 60, [Path(p) for p in DEMO_EVAL_ALLOW.split(":")])
    with nix.build(DEMO, packages, "x86_64-linux") as result:
        for _ in range(max(args.runs, 1) * 10):
            started = time.perf_counter()
            image_sbom(
                title="/".join(packages), revision=Revision(SOURCE_ID, "0" * 64),
                system="x86_64-linux", roots=result.outputs.values(), closure=result.closure,
                meta=result.meta,
            )  # fmt: skip
            sbom_s.append(time.perf_counter() - started)
    with_meta = statistics.median(evaluate(packages, "plan") for _ in range(args.runs))
    without = statistics.median(evaluate(packages, "plan.packages") for _ in range(args.runs))
    print(f"image {args.image}: {components.pop()} store paths, SBOM {sizes.pop()} bytes")
    print(
        f"making the SBOM {statistics.median(sbom_s) * 1000:.2f} ms; the whole build "
        f"{statistics.median(build_s) * 1000:.0f} ms (median of {args.runs})"
    )
    print(f"evaluation with meta {with_meta * 1000:.0f} ms, without {without * 1000:.0f} ms")


if __name__ == "__main__":
    main()
