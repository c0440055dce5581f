#!/usr/bin/env python3
"""The README's QueueScaler reference, generated from the CRD's field descriptions.

    python hack/crd_reference.py           # print the generated section
    python hack/crd_reference.py --write   # replace it in README.md
    python hack/crd_reference.py --check   # exit 1 when README.md is out of date

The section sits between two marker comments in README.md; tests/unit/test_readme.py fails
when it no longer matches crds/queuescaler.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CRD = REPO / "crds" / "queuescaler.yaml"
README = REPO / "README.md"
BEGIN = "<!-- BEGIN generated QueueScaler reference: python hack/crd_reference.py --write -->"
END = "<!-- END generated QueueScaler reference -->"


def _type(schema: dict[str, Any]) -> str:
    kind = str(schema.get("type", "object"))
    if kind == "array":
        return f"[]{_type(schema.get('items') or {})}"
    if schema.get("format") == "date-time":
        return "time"
    return kind


def _constraints(schema: dict[str, Any]) -> str:
    parts: list[str] = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        upper = f"< {high}" if schema.get("exclusiveMaximum") else f"<= {high}"
        parts.append(f"{low} <= x {upper}")
    elif low is not None:
        parts.append(f">= {low}")
    if "maxItems" in schema:
        parts.append(f"at most {schema['maxItems']} items")
    return "; ".join(parts)


def _default(schema: dict[str, Any]) -> str:
    if "default" not in schema or schema["default"] == {}:
        return ""
    return f"`{json.dumps(schema['default'])}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(
    schema: dict[str, Any], path: str, required: bool, depth: int, max_depth: int
) -> Iterator[str]:
    description = _cell(schema.get("description", ""))
    extra = _constraints(schema)
    if extra:
        description += f" ({extra})"
    mark = " (required)" if required else ""
    yield (f"| `{path}`{mark} | {_type(schema)} | {_default(schema)} | {description} |")
    if depth >= max_depth:
        return
    items = schema.get("items") or {}
    children = schema.get("properties") or items.get("properties") or {}
    needed = set(schema.get("required") or items.get("required") or ())
    prefix = f"{path}[]" if "items" in schema else path
    for name, child in children.items():
        yield from _rows(child, f"{prefix}.{name}", name in needed, depth + 1, max_depth)


def reference(crd_path: Path = CRD) -> str:
    """The generated Markdown section, markers included."""
    crd = yaml.safe_load(crd_path.read_text())
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    lines = [
        BEGIN,
        f"`apiVersion: {group}/{version['name']}`, `kind: {kind}`, short name "
        f"`{', '.join(crd['spec']['names'].get('shortNames', []))}`. "
        f"{_cell(root.get('description', ''))}",
        "",
        "`kubectl explain qs.spec` shows the same text. Bad input is refused when applied.",
    ]
    header = ["", "| field | type | default | description |", "|---|---|---|---|"]
    for section in ("spec", "status"):
        lines += ["", f"#### {section}", *header]
        schema = root["properties"][section]
        for name, child in (schema.get("properties") or {}).items():
            lines += _rows(child, f"{section}.{name}", name in (schema.get("required") or ()),
                           1, 4 if section == "spec" else 2)
    lines.append(END)
    return "\n".join(lines) + "\n"


def current_section(readme: str) -> str | None:
    """The section now in the README, markers included (None when the markers are missing)."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        return None
    return readme[start:end + len(END)] + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    parser.add_argument("--check", action="store_true", help="fail when README.md is stale")
    args = parser.parse_args(argv)
    generated = reference()
    readme = README.read_text()
    present = current_section(readme)
    if args.write:
        if present is None:
            print(f"README.md has no {BEGIN!r} marker", file=sys.stderr)
            return 1
        README.write_text(readme.replace(present, generated))
        return 0
    if args.check:
        return 0 if present == generated else 1
    sys.stdout.write(generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
