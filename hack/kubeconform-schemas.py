#!/usr/bin/env python3
"""Offline JSON schemas for kubeconform, from the running apiserver and our CRD files.

kubeconform normally downloads schemas from GitHub; this project's machines cannot. This
script turns the local apiserver's OpenAPI v2 document (`kubectl get --raw /openapi/v2`)
into kubeconform's directory layout, one self-contained ("standalone") schema per kind:

    OUT/v1.36.3-standalone/deployment-apps-v1.json
    OUT/v1.36.3-standalone-strict/deployment-apps-v1.json   (unknown fields refused)

and adds a schema for every CustomResourceDefinition in the given files (the QueueScaler
CRD), built from their openAPIV3Schema. Use it as

    kubeconform -strict -kubernetes-version 1.36.3 -schema-location OUT ...

(a location without a `.json` suffix makes kubeconform append exactly this layout).

The built-in kinds are cached per server version (a marker file records a complete
build); the CRD schemas are rewritten on every run, they are few and cheap.

    python hack/kubeconform-schemas.py --kubeconfig K [--kubectl BIN] [--out DIR] [--crd FILE]...

Prints the Kubernetes version (without the leading v) and the output directory.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("QS_CACHE", Path.home() / ".cache" / "queuescaler"))
DEFAULT_OUT = CACHE / "kubeconform-schemas"
DEFAULT_CRDS = [
    REPO / "charts" / "queuescaler" / "crds" / "queuescaler.yaml",
]
COMPLETE = ".complete"
REF_PREFIX = "#/definitions/"

# Kubernetes types whose OpenAPI v2 description is looser than what YAML authors write.
INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}


def kubectl_raw(kubectl: str, kubeconfig: str, path: str) -> Any:
    result = subprocess.run(
        [kubectl, "--kubeconfig", kubeconfig, "get", "--raw", path],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"kubectl get --raw {path} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def file_name(kind: str, group: str, version: str) -> str:
    """kubeconform's name for a kind's schema: `{kind}-{first group label}-{version}.json`."""
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """Accept an explicit null where a value is optional (Helm renders empty values so)."""
    kind = schema.get("type")
    if isinstance(kind, str):
        schema["type"] = [kind, "null"]
    return schema


def inline(
    schema: Any, definitions: dict[str, Any], strict: bool, seen: tuple[str, ...] = ()
) -> Any:
    """`schema` with every `$ref` replaced by its definition (recursive types cut short)."""
    if isinstance(schema, list):
        return [inline(item, definitions, strict, seen) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(REF_PREFIX):
        name = ref[len(REF_PREFIX):]
        if name.endswith("util.intstr.IntOrString"):
            return dict(INT_OR_STRING)
        if name.endswith("api.resource.Quantity"):
            return dict(QUANTITY)
        if name in seen:  # a recursive type (JSONSchemaProps): anything goes below this point
            return {}
        return inline(definitions[name], definitions, strict, (*seen, name))
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("description", "$ref"):
            continue
        if key == "properties":
            out[key] = {
                name: nullable(inline(sub, definitions, strict, seen))
                for name, sub in value.items()
            }
        elif key in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not"):
            out[key] = inline(value, definitions, strict, seen)
        else:
            out[key] = copy.deepcopy(value)
    if out.get("format") == "int-or-string":
        return dict(INT_OR_STRING)
    if strict and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def builtin_kinds(document: dict[str, Any]) -> Iterable[tuple[str, str, str, str]]:
    """(definition name, group, version, kind) of every kind the apiserver serves."""
    for name, definition in document.get("definitions", {}).items():
        for gvk in definition.get("x-kubernetes-group-version-kind") or ():
            yield name, gvk.get("group", ""), gvk["version"], gvk["kind"]


def write(directory: Path, name: str, schema: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True))
    tmp.replace(path)


def build_builtins(document: dict[str, Any], out: Path, version: str) -> int:
    definitions = document["definitions"]
    written = 0
    for strict in (False, True):
        directory = out / f"v{version}-standalone{'-strict' if strict else ''}"
        for definition, group, api_version, kind in builtin_kinds(document):
            schema = inline(definitions[definition], definitions, strict, (definition,))
            schema["$schema"] = "http://json-schema.org/draft-04/schema#"
            write(directory, file_name(kind, group, api_version), schema)
            written += 1
    return written


def crd_schema(version: dict[str, Any], strict: bool) -> dict[str, Any]:
    """A kubeconform schema for one CRD version: its openAPIV3Schema plus ObjectMeta basics."""
    body = copy.deepcopy(version.get("schema", {}).get("openAPIV3Schema") or {"type": "object"})
    schema: dict[str, Any] = inline(body, {}, strict)
    properties = schema.setdefault("properties", {})
    properties.setdefault("apiVersion", {"type": "string"})
    properties.setdefault("kind", {"type": "string"})
    properties["metadata"] = {"type": "object"}
    if strict and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    schema["$schema"] = "http://json-schema.org/draft-04/schema#"
    return schema


def build_crds(paths: Iterable[Path], out: Path, version: str) -> list[str]:
    names: list[str] = []
    for path in paths:
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") != "CustomResourceDefinition":
                continue
            spec = document["spec"]
            for crd_version in spec["versions"]:
                name = file_name(spec["names"]["kind"], spec["group"], crd_version["name"])
                for strict in (False, True):
                    directory = out / f"v{version}-standalone{'-strict' if strict else ''}"
                    write(directory, name, crd_schema(crd_version, strict))
                names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--kubectl", default=str(CACHE / "bin" / "kubectl"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--crd", type=Path, action="append",
                        help="a file of CustomResourceDefinitions (repeatable); "
                             "default: the chart's crds/")
    args = parser.parse_args(argv)
    server = kubectl_raw(args.kubectl, args.kubeconfig, "/version")
    version = str(server["gitVersion"]).lstrip("v").split("+")[0]
    marker = args.out / f"v{version}-standalone-strict" / COMPLETE
    if not marker.exists():
        document = kubectl_raw(args.kubectl, args.kubeconfig, "/openapi/v2")
        count = build_builtins(document, args.out, version)
        marker.write_text(f"{count} schemas from the apiserver's /openapi/v2\n")
        print(f"wrote {count} built-in schemas for Kubernetes {version}", file=sys.stderr)
    build_crds(args.crd or DEFAULT_CRDS, args.out, version)
    print(version)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
