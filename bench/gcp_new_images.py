"""Many new images at once in Google Cloud mode on the emulators: a queue that fills up.

    .venv/bin/python -m bench.gcp_new_images [--images 50] [--max-queued 20]
                                             [--build-seconds 1] [--smoke]

--images clients, released at once, each pull an image of its own that nobody built before
(`new0`, `new1`, ...: packages new on every run, whose builds sleep --build-seconds), through
the registry function (functions-framework, THREADS 80, as deployed) with
NIXERY_MAX_QUEUED_BUILDS=--max-queued, beside the builder service (gunicorn, from this
checkout); every client may wait (the bounds on waiting requests raised: they all come from
127.0.0.1). Checks: no image built twice, a 503 only for images refused because the queue was
full (at most images - max-queued of them), every other image served whole.

Cloud Tasks sends a queue's tasks up to its max_concurrent_dispatches at once (--builders,
5 in the deployment: builder_max_instances); the emulator sends one at a time, so here it
runs with tests/helpers/tasks_emulator.py, which sends up to --builders, to the one builder
service (gunicorn, 8 threads: a build per task at once, as 5 instances would).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.lib.gcp_services import (
    all_may_wait,
    all_pull,
    builds_started,
    error_kinds,
    services,
)
from bench.lib.harness import command_parser, parse_args
from tests.helpers.registries import demo_plus


def main() -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--max-queued", type=int, default=20)
    parser.add_argument("--build-seconds", type=float, default=1.0)
    parser.add_argument(
        "--builders", type=int, default=5,
        help="tasks Cloud Tasks sends at once (the deployment's builder_max_instances)",
    )  # fmt: skip
    args = parse_args(parser, images=6, max_queued=3, build_seconds=0.2)
    work = Path(tempfile.mkdtemp(prefix="nixery-bench-new-"))
    nonce = uuid.uuid4().hex
    names = [f"new{i}" for i in range(args.images)]
    pkgs = demo_plus(work / "pkgs", {
        name: f"${{demo.busybox}}/bin/sleep {args.build_seconds:g}; "
              f"${{demo.busybox}}/bin/mkdir $out; echo {nonce} > $out/nonce"
        for name in names
    })  # fmt: skip
    env = {
        "NIXERY_PKGS_PATH": str(pkgs), "THREADS": "80",
        "NIXERY_MAX_QUEUED_BUILDS": str(args.max_queued),
        "NIXERY_BUILD_WAIT": str(60 + 3 * args.images * (args.build_seconds + 2)),
        **all_may_wait(80),
    }  # fmt: skip
    with services(work, 1, args.builders, **env) as (emulators, reg, functions):
        began = time.time()
        pulls = all_pull(functions, names)
        seconds = time.time() - began
        builds = builds_started(reg)
        flying = re.findall(r"in flight: (\d+)", emulators.tasks.log())
    answers = Counter(p.status for p in pulls)
    built = {key.replace("cacert/", "").replace("/iana-etc", "") for key in builds}
    figures = {
        "images": args.images,
        "max_queued": args.max_queued,
        "build_seconds": args.build_seconds,
        "answers": {str(k): v for k, v in sorted(answers.items())},
        "served_whole": sum(p.status == 200 and not p.blob_errors for p in pulls),
        "error_kinds": error_kinds(pulls),
        "built": len(built),
        "built_twice": sorted(k for k, n in builds.items() if n > 1),
        "builds_at_once_max": max(map(int, flying), default=0),
        "refused_but_built": sorted(
            n for n, p in zip(names, pulls, strict=True) if p.status == 503 and n in built
        ),
        "seconds": round(seconds, 1),
        "manifest_seconds_max": round(max(p.answered - p.began for p in pulls), 1),
    }
    print(
        f"{args.images} new images at once, NIXERY_MAX_QUEUED_BUILDS={args.max_queued}: answers "
        f"{figures['answers']}, {figures['served_whole']} served whole, {len(built)} built "
        f"(twice: {figures['built_twice'] or 'none'}; at most {figures['builds_at_once_max']} "
        f"at once, of {args.builders} builders) in {seconds:.1f} s"
    )
    if figures["error_kinds"]:
        print(f"errors: {figures['error_kinds']}")
    print(json.dumps(figures, sort_keys=True))
    refused = answers.get(503, 0)
    ok = (
        not figures["built_twice"]
        and not figures["refused_but_built"]
        and figures["builds_at_once_max"] <= args.builders
        and refused <= args.images - args.max_queued
        and figures["served_whole"] == args.images - refused
    )
    if not ok:
        raise SystemExit("FAILED: a duplicate build, a 503 in the queue, or an image not served")


if __name__ == "__main__":
    main()
