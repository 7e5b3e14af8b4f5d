"""What the registry function has loaded after each kind of request, for bench/gcp_costs.py.

    python -P bench/lib/import_probe.py FUNCTION_SOURCE

Creates the function's app as functions-framework does, in this fresh interpreter, answers
a ping, a tag list, a cached manifest, one of its blobs, an unknown digest and a manifest
that has to be built through its test client, and prints one JSON line: the answers' status
codes, the nixery modules and the count of all modules after the ping and after everything,
the top-level packages loaded, and where nixery was loaded from.

Run as a file with -P (no script directory on the path), not with -m: the probe must load
nothing of its own, and -m would add runpy, importlib.machinery and the bench package to
what it counts. For the same reason it imports the standard library and functions-framework
only (not even __future__).
"""

import json
import sys

import functions_framework

OCI = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
ZERO = "sha256:" + "0" * 64


def nixery_modules() -> list[str]:
    return sorted(m for m in sys.modules if m == "nixery" or m.startswith("nixery."))


def main() -> None:
    app = functions_framework.create_app(target="registry", source=sys.argv[1])
    client = app.test_client()
    answers: dict[str, int] = {}
    answers["ping"] = client.get("/v2/").status_code
    after_ping = {"nixery": nixery_modules(), "total": len(sys.modules)}
    answers["tags/list"] = client.get("/v2/shell/hello/tags/list").status_code
    cached = client.get("/v2/shell/hello/manifests/latest", headers=OCI)
    answers["manifest (cached)"] = cached.status_code
    layers = json.loads(cached.data).get("layers", []) if cached.status_code == 200 else []
    blob = layers[0]["digest"] if layers else ZERO
    answers["blob"] = client.get(f"/v2/shell/hello/blobs/{blob}").status_code
    unknown = client.get(f"/v2/shell/hello/manifests/{ZERO}")
    answers["manifest (unknown digest)"] = unknown.status_code
    miss = client.get("/v2/hello/manifests/latest", headers=OCI)
    answers["manifest (miss, built)"] = miss.status_code
    nixery = sys.modules.get("nixery")
    print(json.dumps({
        "answers": answers,
        "after_ping": after_ping,
        "nixery": nixery_modules(),
        "total": len(sys.modules),
        "top_level": sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")}),
        "nixery_file": getattr(nixery, "__file__", None),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
