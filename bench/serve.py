"""Serving a cached image: local mode against the Go reference registry, same run, same client.

    .venv/bin/python -m bench.serve [IMAGE] [--runs 5] [--seconds 10] [--connections 16]
                                    [--rounds 3] [--smoke]

The image is built by a local registry (demo set), pulled out with skopeo and pushed into
Debian's `docker-registry` (distribution/distribution, filesystem storage), so both serve the
same bytes. Then, alternating between them: end-to-end `skopeo copy` into a fresh OCI
directory (median of --runs), manifest GETs by tag under concurrent load with wrk (requests
per second and latency percentiles), then with a single connection (latency without
queueing), and GETs of the image's largest blob under the same load, each --rounds times
with the two taking turns (medians), so that a burst of other work on the machine hits both;
last, the ratios of ours to the reference's. Needs skopeo, wrk and docker-registry.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.lib.harness import command_parser, figure, parse_args, skopeo_copy
from tests.helpers.registries import OCI, Registry, free_port


def reference_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, "
        "cache: {blobdescriptor: inmemory}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError("docker-registry did not start")


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 latency (ms) of GETs of ``url``."""
    out = subprocess.run(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", f"Accept: {OCI}", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(figure(r"Requests/sec:\s+([\d.]+)", out))
    return rps, _ms(figure(r"^\s+50%\s+(\S+)", out)), _ms(figure(r"^\s+99%\s+(\S+)", out))


def alternating(
    urls: dict[str, str], seconds: int, connections: int, rounds: int
) -> dict[str, tuple[float, float, float]]:
    """``wrk``'s figures for each server, the median of ``rounds`` runs taking turns."""
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            runs[name].append(wrk(url, seconds, connections))
    return {
        name: (
            statistics.median(r[0] for r in figures),
            statistics.median(r[1] for r in figures),
            statistics.median(r[2] for r in figures),
        )
        for name, figures in runs.items()
    }


def _ms(latency: str) -> float:
    """wrk's ``765.00us``, ``1.02ms`` or ``1.10s``, in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if latency.endswith(unit):
            return float(latency.removesuffix(unit)) * scale
    raise RuntimeError(f"no unit in wrk's latency {latency!r}")


def largest_blob(host: str, image: str) -> tuple[str, int]:
    """The digest and size of the image's largest layer."""
    request = urllib.request.Request(
        f"http://{host}/v2/{image}/manifests/latest", headers={"Accept": OCI}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        layers = json.load(response)["layers"]
    layer = max(layers, key=lambda layer: layer["size"])
    return layer["digest"], layer["size"]


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("image", nargs="?", default="shell/git/htop")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per figure and server")
    args = parse_args(parser, image="shell/hello", runs=1, seconds=1, connections=2, rounds=1)
    work = Path(tempfile.mkdtemp(prefix="nixery-serve-"))
    ours = Registry(work / "storage").start()
    ref: subprocess.Popen[bytes] | None = None
    try:
        ref, ref_host = reference_registry(work)
        hosts = {"nixery (local mode)": ours.host, "docker-registry": ref_host}
        skopeo_copy(f"docker://{ours.host}/{args.image}", f"oci:{work / 'img'}:x")
        skopeo_copy(f"oci:{work / 'img'}:x", f"docker://{ref_host}/{args.image}:latest")
        pulls: dict[str, list[float]] = {name: [] for name in hosts}
        for run in range(args.runs + 1):  # run 0 warms both: not counted
            for name, host in hosts.items():
                dest = work / f"pull-{run}-{len(pulls[name])}-{host.replace(':', '_')}"
                seconds = skopeo_copy(f"docker://{host}/{args.image}", f"oci:{dest}:x")
                if run:
                    pulls[name].append(seconds)
                shutil.rmtree(dest)
        manifests = {name: f"http://{host}/v2/{args.image}/manifests/latest"
                     for name, host in hosts.items()}  # fmt: skip
        digest, size = largest_blob(ours.host, args.image)
        blobs = {name: f"http://{host}/v2/{args.image}/blobs/{digest}"
                 for name, host in hosts.items()}  # fmt: skip
        load = alternating(manifests, args.seconds, args.connections, args.rounds)
        alone = alternating(manifests, args.seconds, 1, args.rounds)
        blob = alternating(blobs, args.seconds, args.connections, args.rounds)
    finally:
        ours.stop()
        if ref:
            ref.terminate()
            ref.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"image {args.image} (demo set); skopeo copy median of {args.runs}; "
          f"wrk {args.seconds}s, {args.connections} connections, 2 threads, median of "
          f"{args.rounds} taking turns; "
          f"blob: the largest layer, {size / 1e6:.1f} MB")  # fmt: skip
    for name in hosts:
        rps, p50, p99 = load[name]
        rps1, p50_1, p99_1 = alone[name]
        blob_rps = blob[name][0]
        print(f"  {name:20} pull {statistics.median(pulls[name]):.3f} s   "
              f"manifests: {rps:6.0f} req/s, p50 {p50:6.2f} ms, p99 {p99:6.2f} ms; "
              f"1 connection: {rps1:5.0f} req/s, p50 {p50_1:5.2f} ms, p99 {p99_1:5.2f} ms; "
              f"blob: {blob_rps:5.0f} req/s, {blob_rps * size / 1e6:6.0f} MB/s")  # fmt: skip
    mine, theirs = "nixery (local mode)", "docker-registry"
    pull = statistics.median(pulls[mine]) / statistics.median(pulls[theirs])
    print(f"  ours / reference: pull time {pull:.2f}; manifest throughput at "
          f"{args.connections} connections {load[mine][0] / load[theirs][0]:.2f} (target >= 1.0); "
          f"1-connection manifest p50 {alone[mine][1] / alone[theirs][1]:.2f} (target <= 0.6); "
          f"blob throughput at {args.connections} connections "
          f"{blob[mine][0] / blob[theirs][0]:.2f} (target >= 0.9)")  # fmt: skip


if __name__ == "__main__":
    main()
