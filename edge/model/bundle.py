"""Model bundles: the one loader that the edge runtime, the tools and the tests trust.

A bundle is a folder with exactly these files::

    model.tflite     the emotion model (full-INT8 for devices; float32 is allowed for comparison)
    manifest.json    what the device needs to feed the model and what the model is (schema below)
    signature.json   optional: an Ed25519 signature over the manifest (see tools/signing.py)
    model.onnx       optional: the same network as QDQ INT8 ONNX, for the onnxruntime back-end (Jetson)

:func:`load_bundle` refuses, each with one line: a missing or unexpected file, a manifest that
is not JSON or lacks a field, an unknown schema version, a checksum or size mismatch, and a
manifest whose input/output description does not match the model's tensors. ``model.onnx`` and
the manifest's ``onnx`` entry (sha256, size) come together or not at all; as the signature covers
the manifest, it covers the ONNX file through that checksum.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.model.litert import load_interpreter
from edge.model.preprocess import PreprocessSpec
from edge.protocol.flash import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    MODEL_FILE,
    ONNX_FILE,
    OPTIONAL_FILES,
    REQUIRED_FILES,
    SIGNATURE_FILE,
)
from edge.protocol.payloads import PayloadError, check, loads

SCHEMA_VERSION = 1
__all__ = ["MANIFEST_FILE", "MODEL_FILE", "ONNX_FILE", "SIGNATURE_FILE", "Bundle", "load_bundle"]


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    model_bytes: bytes
    onnx_bytes: bytes | None = None
    """``model.onnx`` where the bundle has one (checked against the manifest), else None."""

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
        manifest = loads((path / MANIFEST_FILE).read_bytes(), MAX_MANIFEST_BYTES)
    except (OSError, PayloadError) as exc:
        raise UserError(f"{path / MANIFEST_FILE} is unreadable: {exc}: re-export the bundle") from None
    validate_manifest(manifest, path)
    model = (path / MODEL_FILE).read_bytes()
    if len(model) != manifest["tflite"].get("bytes") or sha256_bytes(model) != manifest["tflite"].get("sha256"):
        raise UserError(f"bundle {path}: {MODEL_FILE} does not match the checksum in its manifest (corrupt or tampered copy)")
    check_tensors(manifest, model, path)
    return Bundle(path, manifest, model, read_onnx(path, manifest, ONNX_FILE in names))


def read_onnx(path: Path, manifest: dict, present: bool) -> bytes | None:
    """The optional ONNX model, verified against the manifest's ``onnx`` entry (which must exist exactly when it does)."""
    declared = manifest.get("onnx")
    if not present and declared is None:
        return None
    if not present:
        raise UserError(f"bundle {path}: its manifest lists {ONNX_FILE} but the file is missing (incomplete copy)")
    if declared is None:
        raise UserError(f"bundle {path}: {ONNX_FILE} is not in its manifest (added by hand?): re-export with --onnx")
    data = (path / ONNX_FILE).read_bytes()
    if len(data) != declared["bytes"] or sha256_bytes(data) != declared["sha256"]:
        raise UserError(f"bundle {path}: {ONNX_FILE} does not match the checksum in its manifest (corrupt or tampered copy)")
    return data


def validate_manifest(manifest, where: Path) -> None:
    """Every field a device acts on, checked against ``edge/protocol/schemas/manifest.json`` before use."""
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(f"bundle {where}: manifest schema version {version!r} is not supported "
                        f"(this runtime reads version {SCHEMA_VERSION}); upgrade the runtime or re-export")
    try:
        check("manifest", manifest)
    except PayloadError as exc:
        raise UserError(f"bundle {where}: {exc}") from None
    if len(manifest["classes"]) != manifest["output"]["shape"][-1]:
        raise UserError(f"bundle {where}: {len(manifest['classes'])} class names but the output has "
                        f"{manifest['output']['shape']} values")
    PreprocessSpec.from_dict(manifest["preprocessing"]["spec"])


def check_tensors(manifest: dict, model: bytes, where: Path) -> None:
    interpreter = load_interpreter(model)
    actual = {"input": tensor_description(interpreter.get_input_details()[0]),
              "output": tensor_description(interpreter.get_output_details()[0])}
    for side in ("input", "output"):
        declared = {k: manifest[side].get(k) for k in actual[side]}
        if declared != actual[side]:
            raise UserError(f"bundle {where}: manifest {side} {declared} does not match the model's {actual[side]}")
