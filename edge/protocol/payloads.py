"""Payloads: JSON in and out, bounded and schema-checked before anything acts on them.

Anything that arrives over MQTT is hostile until proven otherwise: :func:`parse` refuses oversized
payloads, nesting deeper than :data:`MAX_DEPTH` (a deep ``[[[[...`` would otherwise raise
RecursionError inside paho's network thread and kill it), ``NaN``/``Infinity`` (strict JSON parsers
downstream reject them) and anything its JSON Schema in ``schemas/`` does not allow; each refusal
is one :class:`PayloadError` line. :func:`encode` never writes a non-finite number either.

The validator is jsonschema-rs (the Rust ``jsonschema`` crate, Draft 2020-12): about 2 microseconds an event
where the pure-Python ``jsonschema`` took 370 (AVX2 core), the largest cost of ``tools subscribe`` under a fleet's
load. It is imported on the first validation, not at start. It never fetches a schema: every ``$ref`` resolves in
the registry of the files in ``schemas/`` (``offline``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from edge.errors import UserError

SCHEMAS = Path(__file__).resolve().parent / "schemas"
"""The contract's JSON Schemas, package data found beside this module: an import name another distribution
also ships (a stray top-level folder) cannot redirect it."""
MAX_PAYLOAD_BYTES = 2 * 2**20
"""The largest message either side accepts: a 1 MiB flash chunk in base64 plus its fields fits."""
MAX_DEPTH = 16
"""Deepest nesting any payload of the contract has (the manifest's is 4)."""


class PayloadError(UserError):
    """A message or file that is not what the contract allows."""


@cache
def schema(kind: str) -> dict:
    """The JSON Schema of one payload kind (``events``, ``state``, ``stats``, ``cmd``, ``reply``, ``ota``, ``manifest``,
    ``signature``, ``statement``, ``revoked``, ``trust-state``), read once: callers only read it."""
    return json.loads((SCHEMAS / f"{kind}.json").read_text())


BASE_URI = "https://schemas.fer-edge.invalid/"
"""The schemas' names for ``$ref`` (``statement.json#/$defs/...`` in one resolves to ``BASE_URI`` + that): a
hierarchical URI that relative references resolve against, under a reserved domain nothing answers for."""


@cache
def registry():
    """Every schema under its file name, so one schema can use another's definitions (``statement.json#/$defs/...``)
    instead of repeating them: the one definition of each signed statement."""
    import jsonschema_rs

    return jsonschema_rs.Registry([(BASE_URI + path.name, schema(path.stem)) for path in sorted(SCHEMAS.glob("*.json"))])


@cache
def validator(kind: str):
    """The compiled JSON Schema validator for one payload kind."""
    import jsonschema_rs

    return jsonschema_rs.validator_for(schema(kind), registry=registry(), base_uri=f"{BASE_URI}{kind}.json",
                                       offline=True)


def encode(payload: dict) -> bytes:
    """Compact JSON; a non-finite number is a bug on our side, so it raises ValueError here, never reaches a wire."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return value


def loads(data: bytes | str, max_bytes: int = MAX_PAYLOAD_BYTES):
    """Strict JSON: bounded in size and depth, no NaN/Infinity; one PayloadError line otherwise."""
    if len(data) > max_bytes:
        raise PayloadError(f"payload of {len(data)} bytes is larger than the limit of {max_bytes}")
    try:
        value = json.loads(data, parse_constant=_no_constants, parse_float=_finite)
    except RecursionError:
        raise PayloadError(f"payload is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise PayloadError(f"not JSON: {' '.join(str(exc).split())[:200]}") from None
    if depth(value) > MAX_DEPTH:
        raise PayloadError(f"payload is nested deeper than {MAX_DEPTH} levels")
    return value


def depth(value) -> int:
    """Nesting depth of a decoded JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check(kind: str, value) -> dict:
    """``value`` if its schema allows it, else one PayloadError line naming the first problem."""
    import jsonschema_rs

    try:
        validator(kind).validate(value)
    except jsonschema_rs.ValidationError as exc:
        where = "/".join(map(str, exc.instance_path))
        path = list(exc.schema_path)
        message = exc.message if path[-1:] != ["pattern"] else \
            f"{exc.instance!r} is not allowed ({_node(schema(kind), path[:-1]).get('description', 'wrong form')})"
        raise PayloadError(f"invalid {kind}{f' at {where}' if where else ''}: {message[:200]}") from None
    except UnicodeEncodeError:  # "\ud800" is valid JSON but not text the validator (or a database) can hold
        raise PayloadError(f"invalid {kind}: a string holds a lone surrogate (not UTF-8)") from None
    return value


def _node(root: dict, path: list) -> dict:
    """The schema object at ``path`` (keys and indices) below ``root``, or {} where the path leaves this file."""
    node = root
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return {}
    return node if isinstance(node, dict) else {}


def parse(kind: str, data: bytes | str, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict:
    """Decode and validate one ``kind`` payload: :func:`loads` then :func:`check`."""
    return check(kind, loads(data, max_bytes))


def decode(payload: bytes) -> dict | str:
    """A message body as JSON, or as text for plain payloads such as ``online``/``offline`` (operator side)."""
    try:
        return loads(payload)
    except PayloadError:
        return payload.decode(errors="replace")
