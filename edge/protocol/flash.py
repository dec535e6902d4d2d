"""The flash protocol: how a bundle travels to a device, and what a bundle folder may hold.

An operator sends ``ota_begin`` / ``ota_chunk`` / ``ota_commit`` on the device's ``cmd`` topic
(fields and limits in ``schemas/cmd.json``); the device answers on its ``ota`` topic
(``schemas/ota.json``). The payload is an uncompressed tar of the bundle's files
(:func:`pack`); chunks are written at their offset, so duplicates and any order are harmless, and
a ``begin`` with the id of an unfinished transfer resumes it. ``tools flash --ssh/--to`` copies the
folder into the device's ``incoming/`` instead, under a hidden name renamed when complete.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import math
import re
import tarfile
from typing import BinaryIO, Iterable, Iterator

from edge.errors import UserError, printable

MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE = "model.tflite", "manifest.json", "signature.json"
ONNX_FILE = "model.onnx"
"""Optional: the same network as QDQ INT8 ONNX for the onnxruntime back-end (``trainer export --onnx``)."""
FLOAT_WEIGHTS_FILE = "float.weights.h5"
"""Optional: the float checkpoint the model was made from, for fine-tuning (``trainer fit --init BUNDLE``); its
sha256 is in the manifest (which the signature covers) and the trainer checks it; devices ignore the file."""
REQUIRED_FILES = frozenset({MODEL_FILE, MANIFEST_FILE})
OPTIONAL_FILES = frozenset({SIGNATURE_FILE, ONNX_FILE, FLOAT_WEIGHTS_FILE})
BUNDLE_FILES = REQUIRED_FILES | OPTIONAL_FILES
"""The only names a bundle folder, a flash archive or ``incoming/`` may hold."""

INCOMING = "incoming"
"""The folder under a device's models directory where copied bundles wait for installation."""
BEGIN, CHUNK, COMMIT = "ota_begin", "ota_chunk", "ota_commit"
FLASH_COMMANDS = (BEGIN, CHUNK, COMMIT)
MAX_BUNDLE_BYTES = 64 * 2**20
MAX_CHUNK_BYTES = 2**20
MIN_CHUNK_BYTES = 512
"""Chunks are at least this big (the last one excepted), so a transfer's chunk count is bounded by the bundle limit:
an announcement cannot make a device track millions of chunks."""
MAX_CHUNKS = MAX_BUNDLE_BYTES // MIN_CHUNK_BYTES
"""131072: what a device keeps per transfer is one bit per chunk (16 KiB), sized only after the count was checked."""
MAX_MISSING_RANGES = 256
"""A device names at most this many runs of missing chunks per answer (the first ones; the rest in the next answer),
so even a transfer that lost every other chunk gets a short answer."""
MAX_MANIFEST_BYTES = 2**20
MAX_SIGNATURE_BYTES = 4096
RANGE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")
"""One run of chunk indices in an answer's ``missing``: ``20`` or ``3-17``."""


def pack(folder) -> bytes:
    """A bundle folder as the flash payload: an uncompressed tar with fixed metadata (same bytes every time).

    The float weights stay behind: they are for fine-tuning on a workstation, tens of MB no device uses."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(p for p in folder.iterdir() if p.name in BUNDLE_FILES - {FLOAT_WEIGHTS_FILE}):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def unpack(data: bytes | BinaryIO) -> dict[str, bytes]:
    """The flash payload's files by name, from its bytes or an open file (a device reads its reassembled transfer
    from disk instead of holding it twice); anything but a plain bundle file name is refused, nothing is written."""
    files = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data) if isinstance(data, bytes) else data, mode="r:") as tar:
            for member in tar:
                if not member.isfile() or member.name not in BUNDLE_FILES or member.name in files:
                    raise UserError(f"bundle archive member {member.name!r} is not allowed "
                                    f"(only {', '.join(sorted(BUNDLE_FILES))})")
                files[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise UserError(f"bundle archive is unreadable: {exc}") from None
    return files


def messages(payload: bytes, name: str, transfer: str, chunk_size: int = 64 * 1024,
             allow_downgrade: dict | None = None) -> Iterator[dict]:
    """The flash protocol's messages for ``payload``: begin, every chunk in order, commit.

    ``allow_downgrade``: a signed statement (:func:`edge.model.trust.downgrade_permission`, signed with
    :func:`edge.model.trust.sign_statement`) that lets devices install this bundle although they run a newer one."""
    chunks = math.ceil(len(payload) / chunk_size)
    begin = {"cmd": BEGIN, "transfer": transfer, "name": name, "size": len(payload),
             "sha256": hashlib.sha256(payload).hexdigest(), "chunk_size": chunk_size, "chunks": chunks}
    yield begin if allow_downgrade is None else {**begin, "allow_downgrade": allow_downgrade}
    for index in range(chunks):
        yield chunk_message(payload, transfer, index, chunk_size)
    yield {"cmd": COMMIT, "transfer": transfer}


def chunk_message(payload: bytes, transfer: str, index: int, chunk_size: int) -> dict:
    data = payload[index * chunk_size:(index + 1) * chunk_size]
    return {"cmd": CHUNK, "transfer": transfer, "index": index, "data": base64.b64encode(data).decode()}


def format_ranges(runs: Iterable[tuple[int, int]], limit: int = MAX_MISSING_RANGES) -> str:
    """Chunk indices as the ``missing`` field says them: inclusive runs ``(3, 17), (20, 20)`` as ``"3-17, 20"``;
    at most ``limit`` runs (the first ones), so the answer stays short whatever was lost."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in itertools.islice(runs, limit))


def parse_ranges(text: str, chunks: int) -> list[int]:
    """The chunk indices an ``ota`` answer's ``missing`` names (the operator resends them); indices at or beyond
    ``chunks`` (the transfer's count) are refused, so a bogus answer cannot make the sender build a huge list."""
    indices: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        found = RANGE.fullmatch(part)
        if found is None:
            raise UserError(f"missing chunks {printable(text, 80)!r} are not ranges like '3-17, 20'")
        first, last = int(found[1]), int(found[2] or found[1])
        if not 0 <= first <= last < chunks or len(indices) + last - first >= chunks:
            raise UserError(f"missing chunks {printable(part, 40)!r} do not fit a transfer of {chunks} chunks")
        indices.extend(range(first, last + 1))
    return indices
