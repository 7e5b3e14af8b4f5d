"""Warm pulls at scale in Google Cloud mode on the emulators, and what they cost.

    .venv/bin/python -m bench.gcp_warm [--pulls 1000] [--threads 80] [--instances N] [--smoke]

Five images of the demo set are built first; then --pulls clients, released at once, each
pull one of them (its manifest by tag, then every blob's redirect) from the registry
function: functions-framework with THREADS request threads (80, the deployment's
registry_concurrency), as many instances as the clients need (one per 80, as Cloud Run
would start them). Prints the pulls' and the requests' p50/p99, the errors, the function's
CPU per pull, and that CPU priced as Cloud Run bills it (request-based: the instance's vCPU
and memory while it serves, plus each request), per million pulls.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from bench.lib.gcp_services import (
    Pull,
    all_pull,
    error_kinds,
    pull,
    registry_cpu,
    services,
)
from bench.lib.harness import command_parser, parse_args, percentile

IMAGES = ["shell/hello", "hello", "zlib", "shell/htop", "shell/git"]
# Cloud Run, request-based billing, Tier 1 (docs/cost.md): the function's 1 vCPU and 512 MiB.
VCPU_SECOND = 0.000024
GIB_SECOND = 0.0000025
PER_REQUEST = 0.40 / 1_000_000
FUNCTION_GIB = 0.5


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--pulls", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=80, help="per function instance")
    parser.add_argument("--instances", type=int, help="default: one per THREADS pulls")
    parser.add_argument(
        "--cold-blobs", action="store_true",
        help="warm the instances with the manifests only: each meets the blobs in the burst",
    )  # fmt: skip
    args = parse_args(parser, pulls=10, instances=1)
    count = args.instances or math.ceil(args.pulls / args.threads)
    work = Path(tempfile.mkdtemp(prefix="nixery-bench-warm-"))
    with services(work, count, THREADS=str(args.threads)) as (_, _, functions):
        for name in IMAGES:  # built, then pulled once by every instance: all of it warm
            for f in functions:
                if args.cold_blobs:
                    warming = Pull(f.get(f"/v2/{name}/manifests/latest").status_code)
                else:
                    warming = pull(f.url, name)
                if warming.status != 200 or warming.error:
                    raise SystemExit(f"FAILED: warming {name}: {warming.error}")
        cpu = registry_cpu(functions)
        began = time.time()
        pulls = all_pull(functions, [IMAGES[i % len(IMAGES)] for i in range(args.pulls)])
        seconds = time.time() - began
        cpu = registry_cpu(functions) - cpu
    durations = [(p.ended - p.began) * 1000 for p in pulls]
    per_request = [d / p.requests for d, p in zip(durations, pulls, strict=True)]
    requests = sum(p.requests for p in pulls)
    errors = sum(p.status != 200 for p in pulls) + sum(p.blob_errors for p in pulls)
    cpu_ms = cpu * 1000 / args.pulls
    # Busy instances bill their vCPU and memory for as long as they serve: at best (an
    # instance kept busy) the CPU time itself, priced per million pulls.
    compute = cpu_ms / 1000 * (VCPU_SECOND + FUNCTION_GIB * GIB_SECOND) * 1_000_000
    calls = requests / args.pulls * PER_REQUEST * 1_000_000
    figures = {
        "pulls": args.pulls,
        "instances": count,
        "threads": args.threads,
        "requests_per_pull": round(requests / args.pulls, 1),
        "seconds": round(seconds, 1),
        "pull_ms": {
            "p50": round(percentile(durations, 0.5), 1),
            "p99": round(percentile(durations, 0.99), 1),
        },
        "request_ms": {
            "p50": round(percentile(per_request, 0.5), 2),
            "p99": round(percentile(per_request, 0.99), 2),
        },
        "errors": errors,
        "error_kinds": error_kinds(pulls),
        "registry_cpu_ms_per_pull": round(cpu_ms, 2),
        "usd_per_million_pulls": {"compute": round(compute, 2), "requests": round(calls, 2)},
    }
    print(
        f"{args.pulls} warm pulls at once of {len(IMAGES)} images ({figures['requests_per_pull']} "
        f"requests each) on {count} instance(s) of {args.threads} threads: {seconds:.1f} s, "
        f"{errors} errors"
    )
    print(
        f"pull p50 {figures['pull_ms']['p50']} ms, p99 {figures['pull_ms']['p99']} ms; mean "
        f"request of a pull p50 {figures['request_ms']['p50']} ms, p99 "
        f"{figures['request_ms']['p99']} ms"
    )
    print(
        f"function CPU {cpu_ms:.2f} ms per pull: per million pulls ${compute:.2f} of vCPU and "
        f"memory (busy instances) + ${calls:.2f} of requests"
    )
    if figures["error_kinds"]:
        print(f"errors: {figures['error_kinds']}")
    print(json.dumps(figures, sort_keys=True))
    if errors:
        raise SystemExit(f"FAILED: {errors} errors")


if __name__ == "__main__":
    main()
