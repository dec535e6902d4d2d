"""Flash transfers: chunks reassembled on disk at their offsets, verified, handed to the store."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from edge.device.updates.store import PARTIAL, BundleStore, OtaResult
from edge.errors import UserError
from edge.protocol.flash import BEGIN, CHUNK, COMMIT, unpack
from edge.protocol.payloads import PayloadError, check


@dataclass
class _Transfer:
    id: str
    name: str
    size: int
    sha256: str
    chunk_size: int
    chunks: int
    path: Path
    received: set[int] = field(default_factory=set)

    def missing(self) -> list[int]:
        return sorted(set(range(self.chunks)) - self.received)


class OtaReceiver:
    """Turns flash messages into installs; keeps at most one transfer (one ``.part`` file) in progress."""

    def __init__(self, store: BundleStore):
        self.store = store
        self.transfer: _Transfer | None = None
        self.handlers = {BEGIN: self.begin, CHUNK: self.chunk, COMMIT: self.commit}

    def handle(self, message: dict) -> OtaResult | None:
        """Process one ``ota_*`` message (checked against ``cmd.json`` first); the answer to publish, None for chunks."""
        transfer = str(message.get("transfer"))[:64] if isinstance(message, dict) else "None"
        try:
            check("cmd", message)
            if message["cmd"] not in self.handlers:
                raise UserError(f"{message['cmd']!r} is not a flash message")
            return self.handlers[message["cmd"]](message)
        except (UserError, PayloadError) as exc:
            self._drop()
            return OtaResult(transfer, "refused", reason=str(exc))

    def begin(self, message: dict) -> OtaResult:
        transfer, name, size = message["transfer"], message["name"], message["size"]
        chunk_size, chunks = message["chunk_size"], message["chunks"]
        if size > self.store.max_bytes:
            raise UserError(f"bundle of {size} bytes refused: this device accepts up to {self.store.max_bytes}")
        if chunks != math.ceil(size / chunk_size):
            raise UserError(f"chunking {chunks} x {chunk_size} bytes does not fit {size} bytes")
        path = self.store.root / PARTIAL / f"{transfer}.part"
        fresh = _Transfer(transfer, name, size, message["sha256"], chunk_size, chunks, path)
        if self.transfer is None or dataclasses.replace(self.transfer, received=set()) != fresh:
            self._drop()  # one transfer at a time: a new one frees the old one's space
            path.unlink(missing_ok=True)
            self.transfer = fresh
        return OtaResult(transfer, "ready", missing=self.transfer.missing())

    def chunk(self, message: dict) -> None:
        t = self.transfer
        if t is None or message["transfer"] != t.id:
            return None  # a leftover of a finished or replaced transfer
        index = message["index"]
        try:
            data = base64.b64decode(message["data"], validate=True)
        except binascii.Error:
            raise UserError(f"chunk {index} is not valid base64") from None
        expected = t.chunk_size if index < t.chunks - 1 else t.size - t.chunk_size * (t.chunks - 1)
        if not 0 <= index < t.chunks or len(data) != expected:
            raise UserError(f"chunk {index} ({len(data)} bytes) does not fit a transfer of {t.chunks} chunks, {t.size} bytes")
        fd = os.open(t.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data, index * t.chunk_size)
        finally:
            os.close(fd)
        t.received.add(index)
        return None

    def commit(self, message: dict) -> OtaResult:
        t = self.transfer
        if t is None or message["transfer"] != t.id:
            raise UserError(f"no transfer {message['transfer']!r} in progress (device restarted?): flash again")
        if t.missing():
            return OtaResult(t.id, "incomplete", missing=t.missing())
        data = t.path.read_bytes()
        self._drop()
        if len(data) != t.size or hashlib.sha256(data).hexdigest() != t.sha256:
            raise UserError("transfer does not match its sha256 (corrupt or tampered in transit)")
        return self.store.install(unpack(data), t.name, t.id)

    def _drop(self) -> None:
        if self.transfer is not None:
            self.transfer.path.unlink(missing_ok=True)
            self.transfer = None
