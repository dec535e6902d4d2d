"""Flash transfers: chunks reassembled on disk at their offsets, verified, handed to the store.

Every number in an announcement is checked before anything is sized by it: the bundle limit, a chunk size of
:data:`~edge.protocol.flash.MIN_CHUNK_BYTES` to :data:`~edge.protocol.flash.MAX_CHUNK_BYTES` and a chunk count that
is exactly what size and chunk size give (at most :data:`~edge.protocol.flash.MAX_CHUNKS`). What a transfer keeps
in memory is then one bit per chunk (16 KiB at most), and the answer names missing chunks as ranges, so neither
grows with what a sender claims. One transfer at a time; its bytes live in one ``.part`` file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from edge.device.updates.store import PARTIAL, BundleStore, OtaResult
from edge.errors import UserError
from edge.protocol.flash import (
    BEGIN,
    CHUNK,
    COMMIT,
    MAX_CHUNK_BYTES,
    MAX_CHUNKS,
    MIN_CHUNK_BYTES,
    format_ranges,
    unpack,
)
from edge.protocol.payloads import PayloadError, check

HASH_BLOCK = 2**20


@dataclass
class _Transfer:
    id: str
    name: str
    size: int
    sha256: str
    chunk_size: int
    chunks: int
    path: Path
    permission: dict | None = field(default=None, compare=False)
    """The begin's allow-downgrade statement, if any; a resumed begin may add or replace it."""
    received: bytearray = field(default_factory=bytearray, compare=False)
    """One bit per chunk, sized by :meth:`start` once the count was checked: never a set of indices."""

    def start(self) -> "_Transfer":
        self.received = bytearray((self.chunks + 7) // 8)
        return self

    def mark(self, index: int) -> None:
        self.received[index >> 3] |= 1 << (index & 7)

    def has(self, index: int) -> bool:
        return bool(self.received[index >> 3] >> (index & 7) & 1)

    def missing(self) -> Iterator[tuple[int, int]]:
        """The chunks not yet received, as inclusive runs, lowest first (whole bytes of received chunks skipped)."""
        first = None
        for byte_index, byte in enumerate(self.received):
            if (byte == 0xFF and first is None) or (byte == 0 and first is not None):
                continue  # a whole byte that neither starts nor ends a run
            for index in range(byte_index * 8, min(byte_index * 8 + 8, self.chunks)):
                if not self.has(index):
                    first = index if first is None else first
                elif first is not None:
                    yield first, index - 1
                    first = None
        if first is not None:
            yield first, self.chunks - 1

    def complete(self) -> bool:
        return next(self.missing(), None) is None


class OtaReceiver:
    """Turns flash messages into installs; keeps at most one transfer (one ``.part`` file) in progress."""

    def __init__(self, store: BundleStore):
        self.store = store
        self.transfer: _Transfer | None = None
        self.handlers = {BEGIN: self.begin, CHUNK: self.chunk, COMMIT: self.commit}

    def handle(self, message: dict) -> OtaResult | None:
        """Process one ``ota_*`` message (checked against ``cmd.json`` first); the answer to publish, None for chunks."""
        transfer = message.get("transfer") if isinstance(message, dict) else None
        transfer = transfer[:64] if isinstance(transfer, str) else "None"
        try:
            check("cmd", message)
            if message["cmd"] not in self.handlers:
                raise UserError(f"{message['cmd']!r} is not a flash message")
            return self.handlers[message["cmd"]](message)
        except (UserError, PayloadError) as exc:
            self._drop()
            return OtaResult(transfer, "refused", reason=str(exc)[:1000])
        except OSError as exc:  # the device's own storage (full, read-only): the sender should hear it too
            self._drop()
            return OtaResult(transfer, "refused", reason=f"cannot store the transfer on this device: {exc.strerror}")

    def begin(self, message: dict) -> OtaResult:
        transfer, name, size = message["transfer"], message["name"], message["size"]
        chunk_size, chunks = message["chunk_size"], message["chunks"]
        if size > self.store.max_bytes:
            raise UserError(f"bundle of {size} bytes refused: this device accepts up to {self.store.max_bytes}")
        if not MIN_CHUNK_BYTES <= chunk_size <= MAX_CHUNK_BYTES:
            raise UserError(f"chunks of {chunk_size} bytes refused: {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES} bytes")
        if chunks != math.ceil(size / chunk_size) or chunks > MAX_CHUNKS:
            raise UserError(f"chunking {chunks} x {chunk_size} bytes does not fit {size} bytes")
        path = self.store.root / PARTIAL / f"{transfer}.part"
        fresh = _Transfer(transfer, name, size, message["sha256"], chunk_size, chunks, path,
                          message.get("allow_downgrade"))
        if self.transfer != fresh:  # the descriptions differ: not a resume
            self._drop()  # one transfer at a time: a new one frees the old one's space
            path.unlink(missing_ok=True)
            self.transfer = fresh.start()
        self.transfer.permission = fresh.permission
        return OtaResult(transfer, "ready", missing=format_ranges(self.transfer.missing()))

    def chunk(self, message: dict) -> None:
        t = self.transfer
        if t is None or message["transfer"] != t.id:
            return None  # a leftover of a finished or replaced transfer
        index = message["index"]
        if not 0 <= index < t.chunks:
            raise UserError(f"chunk {index} does not fit a transfer of {t.chunks} chunks")
        try:
            data = base64.b64decode(message["data"], validate=True)
        except binascii.Error:
            raise UserError(f"chunk {index} is not valid base64") from None
        expected = t.chunk_size if index < t.chunks - 1 else t.size - t.chunk_size * (t.chunks - 1)
        if len(data) != expected:
            raise UserError(f"chunk {index} ({len(data)} bytes) does not fit a transfer of {t.chunks} chunks, {t.size} bytes")
        fd = os.open(t.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, index * t.chunk_size)
        finally:
            os.close(fd)
        t.mark(index)
        return None

    def commit(self, message: dict) -> OtaResult:
        t = self.transfer
        if t is None or message["transfer"] != t.id:
            raise UserError(f"no transfer {message['transfer']!r} in progress (device restarted?): flash again")
        if not t.complete():
            return OtaResult(t.id, "incomplete", missing=format_ranges(t.missing()))
        try:
            with open(t.path, "rb") as f:
                if os.fstat(f.fileno()).st_size != t.size or _sha256(f) != t.sha256:
                    raise UserError("transfer does not match its sha256 (corrupt or tampered in transit)")
                f.seek(0)
                files = unpack(f)
        finally:
            self._drop()
        return self.store.install(files, t.name, t.id, t.permission)

    def _drop(self) -> None:
        if self.transfer is not None:
            self.transfer.path.unlink(missing_ok=True)
            self.transfer = None


def _sha256(f) -> str:
    """The hash of an open file, read in blocks: a 64 MiB transfer is never held twice."""
    digest = hashlib.sha256()
    while block := f.read(HASH_BLOCK):
        digest.update(block)
    return digest.hexdigest()
