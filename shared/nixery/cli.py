"""The ``nixery`` command. Flags override the environment variables of the same meaning."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from . import config, logs

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
    commands.add_parser(
        "hash-password",
        help="hash a password for NIXERY_AUTH_USERS (read from stdin, or asked for)",
    )
    args = parser.parse_args(argv)
    if args.command == "popcount":
        return _popcount(args)
    if args.command == "hash-password":
        return _hash_password()

    env = dict(os.environ)
    for flag, variable in _FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            env[variable] = value
    logs.setup(args.log_level)
    from .local.serve import serve as run

    try:
        run(config.local_settings(env))  # returns only when the server stops
    except config.ConfigError as e:
        print(f"nixery: configuration error: {e}", file=sys.stderr)
        return 2
    return 0


def _hash_password() -> int:
    from .auth import hash_password

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
    from .popcount import popcount

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
