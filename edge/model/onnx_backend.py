"""The onnxruntime back-end: a bundle's ``model.onnx`` (QDQ INT8) on TensorRT, CUDA or the CPU.

Why a second back-end: on a Jetson, LiteRT runs on the ARM cores only; onnxruntime-gpu runs the
same INT8 network on the GPU through TensorRT (explicit quantization: it reads the Q/DQ scales).
onnxruntime is optional (``pip install -e '.[onnx]'`` for the CPU wheel; a Jetson installs NVIDIA's
onnxruntime-gpu wheel for its JetPack instead), so it is imported only when this back-end is chosen.

Providers are named ``tensorrt``, ``cuda`` and ``cpu`` in the device's config; without a list the
order is TensorRT -> CUDA -> CPU, keeping only what this onnxruntime build offers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.model.preprocess import PreprocessSpec, normalize

log = logging.getLogger("edge.model.onnx")

INPUT_NAME, OUTPUT_NAME = "face", "probabilities"
"""The ONNX model's float32 input (normalized faces, N x S x S x 1) and output (N x classes), as written by
``trainer export --onnx``."""
PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
"""Config names of the execution providers, fastest first: the automatic order."""
MAX_BATCH = 16
"""Faces per run; larger batches are split. TensorRT builds one engine for batches 1..MAX_BATCH (one profile)."""
INT8_ALLOWED = "session.qdqisint8allowed"
"""Keep the model's signed INT8 activations on x86 (the default on ARM). Without it, onnxruntime's x86 CPU provider
rewrites them to uint8 (``QDQS8ToU8Transformer``) for its u8 x s8 kernels, whose AVX2 path (``vpmaddubsw``) saturates
a pair of products at 16 bits when weights use the full symmetric INT8 range, as this export's do. On an AVX2 core
without VNNI that changed the answer on 30 % of the test faces, under onnxruntime 1.23 and 1.32 alike (the AVX-512
machines this suite ran on before, whose VNNI ``vpdpbusd`` does not saturate, agreed on 95 % or more). With signed
kernels the same faces agree with LiteRT on 98 % on this AVX2 core, at 4.3 ms per face against 2.6 ms for the wrong
answers (tiny-ck-onnx, one thread). Onnxruntime versions that do not know the key ignore it."""


def engine_cache() -> Path:
    """Where TensorRT keeps built engines (building one takes minutes on a Jetson, loading a cached one a second):
    systemd's ``CacheDirectory=`` (``$CACHE_DIRECTORY``) for a service, else ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    if os.environ.get("CACHE_DIRECTORY"):
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0]) / "tensorrt"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fer-edge" / "tensorrt"


def choose_providers(requested: list[str], available: list[str]) -> list[str]:
    """onnxruntime provider names for the config's ``requested`` names (empty: every available one, fastest first).

    A requested provider this onnxruntime build lacks is an error, not a silent fallback: a Jetson
    that was meant to run on TensorRT and runs on its CPU instead would only show it in its frame rate."""
    if not requested:
        return [name for name in PROVIDERS.values() if name in available]
    unknown = [p for p in requested if p not in PROVIDERS]
    if unknown:
        raise UserError(f"unknown onnxruntime provider {unknown[0]!r}; known: {', '.join(PROVIDERS)}")
    missing = [p for p in requested if PROVIDERS[p] not in available]
    if missing:
        offered = ", ".join(k for k, v in PROVIDERS.items() if v in available) or "none"
        raise UserError(f"onnxruntime provider {missing[0]} is not in this onnxruntime build (it offers: {offered}); "
                        "on a Jetson install NVIDIA's onnxruntime-gpu wheel for your JetPack, or set model.providers")
    return [PROVIDERS[p] for p in requested]


def provider_options(name: str, input_shape: list[int]) -> tuple[str, dict]:
    """TensorRT needs INT8 switched on for a Q/DQ model (else the engine build fails), a profile for the dynamic
    batch, and an engine cache; the other providers run with their defaults."""
    if name != PROVIDERS["tensorrt"]:
        return name, {}
    cache = engine_cache()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the TensorRT engine cache {cache}: {exc.strerror} (a service needs "
                        "CacheDirectory= in its unit)") from None
    face = "x".join(map(str, input_shape[1:]))
    return name, {"trt_int8_enable": True, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                  "trt_engine_cache_path": str(cache),
                  "trt_profile_min_shapes": f"{INPUT_NAME}:1x{face}",
                  "trt_profile_opt_shapes": f"{INPUT_NAME}:1x{face}",
                  "trt_profile_max_shapes": f"{INPUT_NAME}:{MAX_BATCH}x{face}"}


class OnnxRunner:
    """uint8 faces -> probabilities through an onnxruntime session (the classifier's ``litert`` twin)."""

    def __init__(self, model: bytes, spec: PreprocessSpec, threads: int = 1, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("model.backend onnxruntime needs onnxruntime: pip install -e '.[onnx]' (on a Jetson, "
                            "NVIDIA's onnxruntime-gpu wheel for your JetPack), or set model.backend: litert") from None
        self.spec = spec
        input_shape = [1, spec.input_size, spec.input_size, 1]
        chosen = choose_providers(providers or [], ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # errors only: a fallback is reported below, in one line
        options.add_session_config_entry(INT8_ALLOWED, "1")
        try:
            self.session = ort.InferenceSession(model, options, providers=[provider_options(p, input_shape)
                                                                           for p in chosen])
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, EPFail ...)
            raise UserError(f"onnxruntime cannot load the bundle's model.onnx: {' '.join(str(exc).split())}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise UserError(f"the bundle's model.onnx has inputs {[i.name for i in inputs]} and outputs "
                            f"{[o.name for o in outputs]}, not [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]: re-export it")
        self.providers = self.session.get_providers()
        if chosen and self.providers[0] != chosen[0]:
            log.warning("onnxruntime could not start %s (see its error above); running on %s", chosen[0],
                        self.providers[0])
        log.info("model.onnx on onnxruntime %s: %s", ort.__version__, ", ".join(self.providers))

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        x = normalize(faces, self.spec)
        return np.concatenate([self.session.run(None, {INPUT_NAME: x[i:i + MAX_BATCH]})[0]
                               for i in range(0, len(x), MAX_BATCH)])
