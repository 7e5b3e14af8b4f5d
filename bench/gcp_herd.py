"""A herd: many clients pull one new image at once, in Google Cloud mode on the emulators.

    .venv/bin/python -m bench.gcp_herd [--clients 200] [--build-seconds 10] [--threads 80]
                                       [--instances N] [--smoke]

The registry function runs under functions-framework with THREADS request threads (the
deployment's registry_concurrency, 80), as many instances as the clients need (one per 80, as
Cloud Run would start them), beside one builder service (gunicorn, from this checkout), all
counted by bench/lib/firestore_reads.py; every client of an instance may wait (the bounds on
waiting requests raised: they all come from 127.0.0.1). The image is `herd`, a package new
on every run (a nonce) whose build sleeps --build-seconds, so that the clients wait for it.
Each client asks for the manifest, then for each blob (a redirect). Prints: builds started,
answers, Firestore reads per client (direct reads and the listeners' reads apart), the
function's CPU per client, and the delay from the builder's publication to each client's
manifest.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.lib.gcp_services import (
    all_may_wait,
    all_pull,
    builds_started,
    error_kinds,
    publications,
    registry_cpu,
    role,
    rpc_log,
    services,
)
from bench.lib.harness import command_parser, parse_args, percentile
from tests.helpers.emulators import PROJECT, Emulators
from tests.helpers.registries import demo_plus


def hear_publications(emulators: Emulators, prefix: str) -> tuple[list[float], Any]:
    """When a listener of this process, as the function's are, hears a build record say
    published (time.time, appended as it happens), and the listener."""
    from google.cloud import firestore

    heard: list[float] = []

    def changed(docs: list[Any], changes: list[Any], read_time: Any) -> None:
        now = time.time()
        done = any(c.document.to_dict().get("status") == "done" for c in changes)
        if done and not heard:
            heard.append(now)

    os.environ["FIRESTORE_EMULATOR_HOST"] = emulators.env()["FIRESTORE_EMULATOR_HOST"]
    client = firestore.Client(project=PROJECT)
    return heard, client.collection(prefix + "builds").on_snapshot(changed)


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--build-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=80, help="per function instance")
    parser.add_argument("--instances", type=int, help="default: one per THREADS clients")
    args = parse_args(parser, clients=5, build_seconds=1.0, instances=1)
    count = args.instances or math.ceil(args.clients / args.threads)
    work = Path(tempfile.mkdtemp(prefix="nixery-bench-herd-"))
    pkgs = demo_plus(work / "pkgs", {
        "herd": f"${{demo.busybox}}/bin/sleep {args.build_seconds:g}; "
                f"${{demo.busybox}}/bin/mkdir $out; echo {uuid.uuid4().hex} > $out/nonce",
    })  # fmt: skip
    env = {"NIXERY_PKGS_PATH": str(pkgs), "THREADS": str(args.threads),
           **all_may_wait(args.threads)}  # fmt: skip
    with services(work, count, None, **env) as (emulators, reg, functions):
        prefix = reg.env["NIXERY_FIRESTORE_PREFIX"]
        heard, listening = hear_publications(emulators, prefix)
        cpu = registry_cpu(functions)
        began = time.time()
        pulls = all_pull(functions, ["herd"] * args.clients)
        ended = time.time()
        cpu = registry_cpu(functions) - cpu
        time.sleep(1)  # the builder's last calls
        listening.unsubscribe()
        log = [e for e in rpc_log(reg) if began <= e.get("t", 0) <= ended and "rpc" in e]
        registry = [e for e in log if role(reg, e) != "builder" and "error" not in e]
        record = [e for e in registry if any(d.startswith(prefix + "builds/") for d in e["docs"])]
        listened = sum(e["reads"] for e in record if e["rpc"] == "listen result")
        direct = sum(e["reads"] for e in record) - listened
        other = sum(e["reads"] for e in registry) - direct - listened
        published = publications(reg)
        lags = [p.answered - published[-1] for p in pulls if published and p.status == 200]
        listener = (heard[0] - published[-1]) * 1000 if heard and published else math.nan
        figures = {
            "clients": args.clients,
            "instances": count,
            "threads": args.threads,
            "build_seconds": args.build_seconds,
            "builds": dict(builds_started(reg)),
            "manifest_answers": sorted({p.status for p in pulls}),
            "served": sum(p.status == 200 and not p.blob_errors for p in pulls),
            "blob_errors": sum(p.blob_errors for p in pulls),
            "error_kinds": error_kinds(pulls),
            "requests": sum(p.requests for p in pulls),
            "seconds": round(ended - began, 2),
            "record_reads_direct": direct,
            "record_reads_listeners": listened,
            "record_reads_per_client": round((direct + listened) / args.clients, 2),
            "other_reads": other,
            "registry_cpu_ms_per_client": round(cpu * 1000 / args.clients, 1),
            "listener_heard_publication_ms": round(listener, 1),
            "answer_after_publication_ms": {
                "p50": round(percentile(lags, 0.5) * 1000, 1),
                "p99": round(percentile(lags, 0.99) * 1000, 1),
                "max": round(max(lags, default=math.nan) * 1000, 1),
            },
        }
    print(
        f"{figures['clients']} clients on {count} instance(s) of {args.threads} threads, one new "
        f"image built in {args.build_seconds:g} s: builds started {figures['builds']}; "
        f"{figures['served']} clients served whole (manifest answers "
        f"{figures['manifest_answers']}, {figures['blob_errors']} blob errors) in "
        f"{figures['seconds']} s"
    )
    print(
        f"Firestore reads of the build's record by the function: {direct} direct + {listened} "
        f"by listeners = {figures['record_reads_per_client']} per client (and {other} reads of "
        f"manifests and referrers); function CPU "
        f"{figures['registry_cpu_ms_per_client']} ms per client"
    )
    lag = figures["answer_after_publication_ms"]
    print(f"manifests answered after the publication: p50 {lag['p50']} ms, p99 {lag['p99']} ms, "
          f"max {lag['max']} ms; a listener heard it after {listener:.1f} ms")  # fmt: skip
    if figures["error_kinds"]:
        print(f"errors: {figures['error_kinds']}")
    print(json.dumps(figures, sort_keys=True))
    builds = figures["builds"]
    ok = sum(builds.values()) == 1 and figures["served"] == args.clients
    if not ok:
        raise SystemExit("FAILED: not one build, or not every client served")


if __name__ == "__main__":
    main()
