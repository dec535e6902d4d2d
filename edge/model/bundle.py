"""Model bundles: the one loader that the edge runtime, the tools and the tests trust.

A bundle is a folder with exactly these files::

    model.tflite     the emotion model (full-INT8 for devices; float32 is allowed for comparison)
    manifest.json    what the device needs to feed the model and what the model is (schema below)
    signature.json   optional: an Ed25519 signature over the manifest (see tools/signing.py)

:func:`load_bundle` refuses, each with one line: a missing or unexpected file, a manifest that
is not JSON or lacks a field, an unknown schema version, a checksum or size mismatch, and a
manifest whose input/output description does not match the model's tensors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.model.litert import load_interpreter
from edge.model.preprocess import PreprocessSpec

SCHEMA_VERSION = 1
MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE = "model.tflite", "manifest.json", "signature.json"
REQUIRED_FILES = {MODEL_FILE, MANIFEST_FILE}
OPTIONAL_FILES = {SIGNATURE_FILE}
REQUIRED_KEYS = {
    "schema_version": int, "name": str, "model_id": str, "version": str, "classes": list, "input": dict,
    "output": dict, "preprocessing": dict, "training": dict, "metrics": dict, "tflite": dict, "created": str,
    "project_version": str,
}


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    model_bytes: bytes

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocessing"]["spec"])

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def version(self) -> str:
        return self.manifest["version"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_description(detail: dict) -> dict:
    """How a manifest describes one model tensor (shape, dtype, quantization)."""
    scale, zero_point = detail["quantization"]
    return {"shape": [int(v) for v in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name,
            "scale": float(scale), "zero_point": int(zero_point)}


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle folder; raise :class:`UserError` with one line if anything is off."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"model bundle {path} not found: expected a folder with {MODEL_FILE} and {MANIFEST_FILE}")
    names = {p.name for p in path.iterdir()}
    missing = REQUIRED_FILES - names
    if missing:
        raise UserError(f"bundle {path} is missing {', '.join(sorted(missing))}: re-export it with `trainer export`")
    extra = names - REQUIRED_FILES - OPTIONAL_FILES
    if extra:
        raise UserError(f"bundle {path} has unexpected files {', '.join(sorted(extra))}: a bundle holds only "
                        f"{', '.join(sorted(REQUIRED_FILES | OPTIONAL_FILES))}")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path / MANIFEST_FILE} is not valid JSON ({exc}): re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path / MANIFEST_FILE} must be a JSON object")
    validate_manifest(manifest, path)
    model = (path / MODEL_FILE).read_bytes()
    if len(model) != manifest["tflite"].get("bytes") or sha256_bytes(model) != manifest["tflite"].get("sha256"):
        raise UserError(f"bundle {path}: {MODEL_FILE} does not match the checksum in its manifest (corrupt or tampered copy)")
    check_tensors(manifest, model, path)
    return Bundle(path, manifest, model)


def validate_manifest(manifest: dict, where: Path) -> None:
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(f"bundle {where}: manifest schema version {version!r} is not supported "
                        f"(this runtime reads version {SCHEMA_VERSION}); upgrade the runtime or re-export")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise UserError(f"bundle {where}: manifest field {key!r} is missing or not a {kind.__name__}")
    if len(manifest["classes"]) != manifest["output"].get("shape", [None, None])[-1]:
        raise UserError(f"bundle {where}: {len(manifest['classes'])} class names but the output has "
                        f"{manifest['output'].get('shape')} values")
    try:
        PreprocessSpec.from_dict(manifest["preprocessing"].get("spec", {}))
    except (TypeError, UserError) as exc:
        raise UserError(f"bundle {where}: bad preprocessing spec: {exc}") from None


def check_tensors(manifest: dict, model: bytes, where: Path) -> None:
    interpreter = load_interpreter(model)
    actual = {"input": tensor_description(interpreter.get_input_details()[0]),
              "output": tensor_description(interpreter.get_output_details()[0])}
    for side in ("input", "output"):
        declared = {k: manifest[side].get(k) for k in actual[side]}
        if declared != actual[side]:
            raise UserError(f"bundle {where}: manifest {side} {declared} does not match the model's {actual[side]}")
