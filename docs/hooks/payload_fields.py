"""MkDocs hook: what each MQTT message of a device contains, generated from the payload schemas.

A page holds a fenced block ``payload-fields`` with a YAML list of topics (``topics: [events, state, ...]``, and
``compact: true`` for one row per topic); this hook replaces it with a table of each topic's fields (nested objects
one level deep) and their descriptions, read from
``edge/protocol/schemas/<topic>.json``: the schemas the device's messages are validated against in the tests, so the
page shows exactly what may leave a device. A topic without a schema fails the build.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from mkdocs.exceptions import PluginError

SCHEMAS = "edge/protocol/schemas"
BLOCK = re.compile(r"^```payload-fields[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def _type(spec: dict) -> str:
    kind = spec.get("type")
    if isinstance(kind, list):
        return " or ".join(kind)
    if "enum" in spec:
        return " \\| ".join(f"`{v}`" for v in spec["enum"])
    return kind or "–"


def _fields(schema: dict) -> list[tuple[str, str, str]]:
    if schema.get("type") != "object":
        return [("(plain text)", _type(schema), schema.get("description", ""))]
    out = []
    for name, spec in schema.get("properties", {}).items():
        out.append((f"`{name}`", _type(spec), spec.get("description", "")))
        for inner, inner_spec in (spec.get("properties") or {}).items():
            out.append((f"`{name}.{inner}`", _type(inner_spec), inner_spec.get("description", "")))
        items = spec.get("items") if isinstance(spec.get("items"), dict) else {}
        for inner, inner_spec in (items.get("properties") or {}).items():
            out.append((f"`{name}[].{inner}`", _type(inner_spec), inner_spec.get("description", "")))
    return out


def table(root: Path, topics: list[str], compact: bool = False) -> str:
    """One row per field, or with ``compact`` one row per topic listing its fields."""
    lines = ["| topic | field | type | what |", "| --- | --- | --- | --- |"]
    if compact:
        lines = ["| topic | what the message holds (every field its schema allows) |", "| --- | --- |"]
    for topic in topics:
        path = root / SCHEMAS / f"{topic}.json"
        if not path.is_file():
            raise PluginError(f"payload fields: {SCHEMAS}/{topic}.json not found")
        schema = json.loads(path.read_text(encoding="utf-8"))
        if compact:
            fields = _fields(schema)
            text = ", ".join(name for name, _, _ in fields) if schema.get("type") == "object" else \
                f"plain text: {fields[0][1]}"
            lines.append(f"| `{topic}` | {text} |")
            continue
        for i, (name, kind, what) in enumerate(_fields(schema)):
            what = " ".join(what.split()).replace("|", "\\|")
            lines.append(f"| {f'`{topic}`' if i == 0 else ''} | {name} | {kind} | {what} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "```payload-fields" not in markdown:
        return markdown
    root = Path(config["config_file_path"]).resolve().parent

    def block(match: re.Match) -> str:
        args = yaml.safe_load(match[1]) or {}
        return table(root, args.get("topics") or [], bool(args.get("compact")))

    return BLOCK.sub(block, markdown)
