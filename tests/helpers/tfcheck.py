"""Checks Terraform configuration offline, where ``terraform validate`` cannot run (it needs
the google provider plugin, which cannot be downloaded here).

What ``validate`` would check against the provider is checked against the provider's own
schema: the CDK bindings of the google provider (``cdktf-cdktf-provider-google``, pinned to
the provider version ``terraform/versions.tf`` pins) ship it as a jsii assembly, in which each
resource's config interface lists its arguments (their Terraform names in the doc links,
whether optional, which are nested blocks) and each resource class its attributes. The
assembly is 98 MB of JSON; what the checks need is distilled once into a small cache.

The configuration is read with python-hcl2, whose output keeps string literals quoted, writes
expressions as ``${...}`` and marks blocks with ``__is_block__``.
"""

from __future__ import annotations

import json
import re
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

PROVIDER_VERSION = "6.50.0"
CDK_WHEEL = "cdktf_cdktf_provider_google-16.12.1-py3-none-any.whl"
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider", "lifecycle"}
_DOC = re.compile(r"docs/(resources|data-sources)/\w+ (google_\w+)\}")
_ANCHOR = re.compile(r"#(\w+) \w+#\w+\}")
_REFERENCE = re.compile(
    r"(?<![\w.\"])(data\.)?(google_\w+)\.(\w+)((?:\[[^\]]*\])*(?:\.\w+(?:\[[^\]]*\])*)*)"
)
_NAMED = re.compile(r"(?<![\w.])(var|local)\.(\w+)")


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


@dataclass
class Block:
    """Arguments (name -> required) and nested blocks (name -> their Block) of one block."""

    arguments: dict[str, bool] = field(default_factory=dict)
    blocks: dict[str, str] = field(default_factory=dict)  # name -> the block's type key


@dataclass
class Schema:
    blocks: dict[str, Block]  # type key -> block; resources and data sources by their names
    attributes: dict[str, dict[str, str | None]]  # type key -> attribute -> nested type key

    @classmethod
    def load(cls, tools: Path) -> Schema:
        cache = tools / f"google-{PROVIDER_VERSION}-schema.json"
        if not cache.exists():
            distilled = _distil(_assembly(tools / CDK_WHEEL))
            cache.write_text(json.dumps(distilled))
        data = json.loads(cache.read_text())
        blocks = {k: Block(v["arguments"], v["blocks"]) for k, v in data["blocks"].items()}
        return cls(blocks, data["attributes"])


def _assembly(wheel: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as archive:
        inner = next(n for n in archive.namelist() if n.endswith(".jsii.tgz"))
        with archive.open(inner) as tgz, tarfile.open(fileobj=tgz) as tar:
            member = tar.extractfile("package/.jsii")
            assert member is not None
            return json.load(member)  # type: ignore[no-any-return]


def _block_type(type_: dict[str, Any]) -> str | None:
    """The fqn of a nested block's type, if the property is a block."""
    if "fqn" in type_:
        return None if type_["fqn"].startswith("cdktf.") else str(type_["fqn"])
    if "collection" in type_:
        return _block_type(type_["collection"]["elementtype"])
    for member in type_.get("union", {}).get("types", []):
        if found := _block_type(member):
            return found
    return None


def _distil(assembly: dict[str, Any]) -> dict[str, Any]:
    types: dict[str, Any] = assembly["types"]
    blocks: dict[str, Any] = {}
    attributes: dict[str, Any] = {}

    def block(fqn: str) -> None:
        if fqn in blocks:
            return
        out: dict[str, Any] = {"arguments": {}, "blocks": {}}
        blocks[fqn] = out
        for prop in types[fqn].get("properties", []):
            anchor = _ANCHOR.search(prop.get("docs", {}).get("remarks", ""))
            name = anchor.group(1) if anchor else snake(prop["name"])
            if nested := _block_type(prop["type"]):
                out["blocks"][name] = nested
                block(nested)
            else:
                out["arguments"][name] = not prop.get("optional", False)

    def attrs(fqn: str) -> None:
        if fqn in attributes or fqn not in types:
            return
        out: dict[str, str | None] = {}
        attributes[fqn] = out
        for prop in types[fqn].get("properties", []):
            if prop.get("static") or prop["name"].endswith("Input") or prop["name"] == "fqn":
                continue
            nested = prop["type"].get("fqn")
            if nested and nested.endswith("List"):
                nested = nested[: -len("List")] + "OutputReference"
            if nested and nested.startswith("cdktf."):
                nested = None
            out[snake(prop["name"])] = nested
            if nested:
                attrs(nested)

    for fqn, spec in types.items():
        if spec.get("base") not in ("cdktf.TerraformResource", "cdktf.TerraformDataSource"):
            continue
        doc = _DOC.search(spec.get("docs", {}).get("summary", ""))
        if doc is None:
            continue
        key = ("data." if doc.group(1) == "data-sources" else "") + doc.group(2)
        block(fqn + "Config")
        blocks[key] = blocks[fqn + "Config"]
        attrs(fqn)
        attributes[key] = attributes[fqn]
    return {"blocks": blocks, "attributes": attributes}


# --- the configuration ---------------------------------------------------------------------


@dataclass
class Config:
    """Every .tf file of a directory, merged."""

    resources: dict[str, dict[str, Any]]  # "type.name" (data sources "data.type.name") -> body
    variables: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    outputs: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, directory: Path) -> Config:
        config = cls({}, {}, {}, {})
        for path in sorted(directory.glob("*.tf")):
            with path.open() as f:
                parsed = hcl2.load(f)
            for kind in ("resource", "data"):
                prefix = "data." if kind == "data" else ""
                for entry in parsed.get(kind, []):
                    for rtype, named in entry.items():
                        for name, body in named.items():
                            key = f"{prefix}{unquote(rtype)}.{unquote(name)}"
                            config.resources[key] = body
            for entry in parsed.get("variable", []):
                config.variables.update({unquote(k): v for k, v in entry.items()})
            for entry in parsed.get("locals", []):
                config.locals.update({k: v for k, v in entry.items() if not k.startswith("__")})
            for entry in parsed.get("output", []):
                config.outputs.update({unquote(k): v for k, v in entry.items()})
        return config

    def resource(self, key: str) -> dict[str, Any]:
        return self.resources[key]


def unquote(value: Any) -> Any:
    """A string literal's value; expressions (``${...}``) and other values as they are."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def strings(value: Any) -> Iterator[str]:
    """Every string in a parsed value, keys of maps included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def _blocks(value: Any) -> list[dict[str, Any]]:
    return (
        [v for v in value if isinstance(v, dict) and v.get("__is_block__")]
        if isinstance(value, list)
        else []
    )


def schema_problems(config: Config, schema: Schema) -> list[str]:
    """What ``terraform validate`` would refuse: unknown resource types, arguments and blocks,
    missing required arguments, and references to what is not declared or has no such
    attribute."""
    problems: list[str] = []

    def check(where: str, body: dict[str, Any], key: str, top: bool) -> None:
        spec = schema.blocks[key]
        present = set()
        for name, value in body.items():
            if name.startswith("__") or (top and name in META_ARGUMENTS):  # hcl2's own keys
                continue
            if name == "dynamic":
                for dyn in _blocks(value):
                    for dname, dbody in dyn.items():
                        if dname.startswith("__"):
                            continue
                        dname = unquote(dname)
                        present.add(dname)
                        if dname not in spec.blocks:
                            problems.append(f"{where}: no block {dname!r}")
                            continue
                        for content in _blocks(dbody.get("content", [])):
                            check(f"{where}.{dname}", content, spec.blocks[dname], False)
                continue
            present.add(name)
            if name in spec.blocks:
                for nested in _blocks(value) or [{}]:
                    check(f"{where}.{name}", nested, spec.blocks[name], False)
            elif name not in spec.arguments:
                problems.append(f"{where}: no argument or block {name!r}")
            elif _blocks(value):
                problems.append(f"{where}: {name!r} is an argument, not a block")
        for name, required in spec.arguments.items():
            if required and name not in present:
                problems.append(f"{where}: the required argument {name!r} is missing")

    for key, body in config.resources.items():
        rtype = key.rsplit(".", 1)[0]
        if rtype not in schema.blocks:
            problems.append(f"{key}: no such resource type in google {PROVIDER_VERSION}")
            continue
        check(key, body, rtype, True)

    everything = [config.resources, config.locals, config.outputs, config.variables]
    for text in (s for part in everything for s in strings(part)):
        for expr in re.findall(r"\$\{(.*)\}", text, re.DOTALL):
            problems.extend(_reference_problems(config, schema, expr))
    return sorted(set(problems))


def _reference_problems(config: Config, schema: Schema, expr: str) -> Iterator[str]:
    for kind, name in _NAMED.findall(expr):
        if kind == "var" and name not in config.variables:
            yield f"var.{name} is not declared"
        if kind == "local" and name not in config.locals:
            yield f"local.{name} is not declared"
    for data, rtype, name, path in _REFERENCE.findall(expr):
        key = f"{data}{rtype}.{name}"
        if key not in config.resources:
            yield f"{key} is referenced but not declared"
            continue
        current: str | None = data + rtype
        for step in re.findall(r"\.(\w+)", path):
            attrs = schema.attributes.get(current or "", {})
            if step not in attrs:
                yield f"{key}{path}: no attribute {step!r}"
                break
            current = attrs[step]
