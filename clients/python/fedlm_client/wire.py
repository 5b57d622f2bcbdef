"""FedLM wire protocol version 2: frames, headers, tensor chunks and streams.

Everything here follows PROTOCOL.md (Sources/FedLMProtocol/PROTOCOL.md in the FedLM repository);
the section names in the comments are that document's.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Optional

import crc32c
import numpy as np

MAGIC = b"FEDLM"
VERSION = 2
MARKER = MAGIC + bytes([VERSION])

HELLO, WELCOME, FETCH, RELEASE, UPDATE, ACK, ERROR, HEARTBEAT, BYE, CHUNK = range(1, 11)
TYPE_NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", FETCH: "FETCH", RELEASE: "RELEASE", UPDATE: "UPDATE",
              ACK: "ACK", ERROR: "ERROR", HEARTBEAT: "HEARTBEAT", BYE: "BYE", CHUNK: "CHUNK"}

DEFAULT_CHUNK_BYTES = 1 << 20
MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """A message that breaks the protocol; `code` is one of PROTOCOL.md's error codes."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass
class Message:
    """One protocol message: its type, its JSON header, and for RELEASE/UPDATE the tensors."""
    type: int
    header: dict
    tensors: Optional["Tensors"] = None

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, str(self.type))


@dataclass
class Tensors:
    """Named tensors as one flat float32 vector, in the layout's order."""
    specs: list  # [(name, shape)]
    values: np.ndarray  # float32, flat

    def __post_init__(self):
        expected = sum(int(np.prod(shape)) for _, shape in self.specs)
        if self.values.dtype != np.float32 or self.values.ndim != 1 or self.values.size != expected:
            raise ValueError(f"{self.values.size} values of {self.values.dtype} for tensors of {expected} float32 values")


def header_json(obj: dict) -> bytes:
    """Headers are JSON objects; absent optional fields are left out (not null)."""
    return json.dumps(_drop_none(obj), separators=(",", ":"), sort_keys=True).encode()


def _drop_none(obj):
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj]
    return obj


def simple(type_: int, header: dict) -> list:
    """A message without tensors: marker, type, header."""
    return [MARKER, bytes([type_]), header_json(header)]


# Tensor chunks ("Frames", "Encodings"): a flat vector cut into chunks of chunkBytes / 4 values,
# each with its CRC-32C in the layout.

def f32_chunks(values: np.ndarray, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list:
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]


def layout(specs: list, chunks: list, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict:
    return {"tensors": [{"name": n, "shape": list(s)} for n, s in specs], "chunkBytes": chunk_bytes,
            "chunkCRC32C": [crc32c.crc32c(c) for c in chunks], "dtype": "F32"}


def update_stream(info: dict, tensors: Tensors, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list:
    """An UPDATE as a stream ("Streams"): the head message, then one CHUNK message per chunk."""
    chunks = f32_chunks(tensors.values, chunk_bytes)
    head = simple(UPDATE, {"info": info, "layout": layout(tensors.specs, chunks, chunk_bytes)})
    n = len(chunks)
    return [head] + [[MARKER, bytes([CHUNK]), struct.pack("<II", i, n), c] for i, c in enumerate(chunks)]


def decode_chunk(data: bytes, dtype: str, count: int, bits: Optional[int]) -> np.ndarray:
    """The float32 values of one chunk of `count` values in encoding `dtype` ("Encodings")."""
    if dtype == "F32":
        expected = 4 * count
        out = np.frombuffer(data, dtype="<f4") if len(data) == expected else None
    elif dtype == "F16":
        expected = 2 * count
        out = np.frombuffer(data, dtype="<f2").astype(np.float32) if len(data) == expected else None
    elif dtype == "BF16":
        expected = 2 * count
        out = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32) if len(data) == expected else None
    elif dtype == "I8":
        expected = 4 + count
        if len(data) == expected:
            scale = struct.unpack("<f", data[:4])[0]
            out = np.frombuffer(data, dtype=np.int8, offset=4).astype(np.float32) * np.float32(scale)
        else:
            out = None
    else:
        raise ProtocolError("shapeMismatch", f"tensors encoded as {dtype}: this client decodes F32, F16, BF16 and I8 "
                                             "(TOPK comes only as release steps, which it never asks for)")
    if out is None:
        raise ProtocolError("malformed", f"a {dtype} chunk of {count} values has {len(data)} bytes, expected {expected}")
    return out


class Reassembly:
    """A RELEASE or UPDATE arriving as a stream or in the one-message form: checks each chunk's
    position, size and CRC-32C on arrival, and the finite values at the end ("Validation")."""

    def __init__(self, message_type: int, header: dict, max_values: int = 256 << 20):
        self.type = message_type
        self.header = header
        try:
            lay = header["layout"]
            self.specs = [(t["name"], [int(d) for d in t["shape"]]) for t in lay["tensors"]]
            self.chunk_bytes = int(lay["chunkBytes"])
            self.crcs = [int(c) for c in lay["chunkCRC32C"]]
            self.dtype = lay.get("dtype") or "F32"
            self.bits = lay.get("bits")
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError("malformed", f"tensor layout: {e!r}")
        if self.chunk_bytes <= 0 or self.chunk_bytes % 4:
            raise ProtocolError("malformed", f"chunk size {self.chunk_bytes} is not a positive multiple of 4")
        if any(d < 0 for _, s in self.specs for d in s):
            raise ProtocolError("malformed", "a tensor with a negative dimension")
        self.total = sum(int(np.prod(s)) for _, s in self.specs)
        if self.total > max_values:
            raise ProtocolError("tooLarge", f"{self.total} values exceed the limit of {max_values}")
        if self.total == 0:
            raise ProtocolError("malformed", "a tensor message without tensors")
        self.per_chunk = self.chunk_bytes // 4
        self.count = (self.total + self.per_chunk - 1) // self.per_chunk
        if len(self.crcs) != self.count:
            raise ProtocolError("malformed", f"{len(self.crcs)} checksums for {self.count} chunks")
        self.values = np.empty(self.total, dtype=np.float32)
        self.received = 0

    def add(self, chunk: bytes, position: Optional[tuple] = None):
        i = self.received
        if position is not None and position != (i, self.count):
            raise ProtocolError("malformed", f"chunk {position[0]} of {position[1]} arrived, expected {i} of {self.count}")
        if i >= self.count:
            raise ProtocolError("malformed", "more chunks than the layout announces")
        if crc32c.crc32c(chunk) != self.crcs[i]:
            raise ProtocolError("badChecksum", f"chunk {i} has CRC-32C {crc32c.crc32c(chunk)}, the header says {self.crcs[i]}")
        start = i * self.per_chunk
        n = min(self.per_chunk, self.total - start)
        self.values[start:start + n] = decode_chunk(chunk, self.dtype, n, self.bits)
        self.received += 1

    @property
    def complete(self) -> bool:
        return self.received == self.count

    def finish(self) -> Message:
        if not self.complete:
            raise ProtocolError("malformed", f"{self.received} of {self.count} chunks arrived")
        bad = np.flatnonzero(~np.isfinite(self.values))
        if bad.size:
            raise ProtocolError("nonFinite", f"a non-finite value at element {int(bad[0])}")
        return Message(self.type, self.header, Tensors(self.specs, self.values))


def parse_head(frames: list) -> tuple:
    """(type, header) of a message's first three frames, checked as PROTOCOL.md says."""
    if len(frames) < 3:
        raise ProtocolError("malformed", f"{len(frames)} frames; a message has at least 3")
    if len(frames[0]) != len(MARKER) or frames[0][:5] != MAGIC:
        raise ProtocolError("malformed", "first frame is not the FEDLM protocol marker")
    if frames[0][5] != VERSION:
        raise ProtocolError("unsupportedVersion", f"protocol version {frames[0][5]}, this client speaks {VERSION}")
    if len(frames[1]) != 1:
        raise ProtocolError("malformed", f"the type frame has {len(frames[1])} bytes")
    t = frames[1][0]
    if t not in TYPE_NAMES:
        raise ProtocolError("unknownType", f"message type {t} is not defined in version {VERSION}")
    if t == CHUNK:
        return t, {}
    if len(frames[2]) > MAX_HEADER_BYTES:
        raise ProtocolError("tooLarge", f"header of {len(frames[2])} bytes")
    try:
        header = json.loads(bytes(frames[2]))
    except ValueError:
        raise ProtocolError("malformed", f"{TYPE_NAMES[t]} header is not valid JSON")
    if not isinstance(header, dict):
        raise ProtocolError("malformed", f"{TYPE_NAMES[t]} header is not a JSON object")
    return t, header


@dataclass
class StreamReceiver:
    """Turns the frames a peer receives into whole messages: a RELEASE or UPDATE head starts a
    reassembly that CHUNK messages continue ("Streams"); a CHUNK without one is dropped.

    With `resumes_releases` (windowed fetches), a RELEASE stream survives a gap: a chunk after a
    missing one (counted in `gaps`) or one already received (`duplicates`) is dropped instead of
    ending the transfer, and a head identical to the one in progress continues it."""
    current: Optional[Reassembly] = None
    dropped_chunks: int = field(default=0)
    resumes_releases: bool = False
    gaps: int = 0
    duplicates: int = 0
    head_frame: Optional[bytes] = None
    head_digest: Optional[int] = None  # CRC-32C of head_frame, taken once per head

    def release_progress(self) -> Optional[tuple]:
        """The RELEASE stream in progress: (CRC-32C of its header frame, chunks received, chunk count)."""
        if self.current is None or self.current.type != RELEASE or self.head_digest is None:
            return None
        return self.head_digest, self.current.received, self.current.count

    def receive(self, frames: list) -> Optional[Message]:
        t, header = parse_head(frames)
        if t == CHUNK:
            if self.current is None:
                self.dropped_chunks += 1
                return None
            if len(frames) != 4 or len(frames[2]) != 8:
                self.current = None
                raise ProtocolError("malformed", "a CHUNK has 4 frames, the third 8 bytes")
            index, count = struct.unpack("<II", bytes(frames[2]))
            if self.resumes_releases and self.current.type == RELEASE and count == self.current.count and index != self.current.received:
                if index > self.current.received:
                    self.gaps += 1
                else:
                    self.duplicates += 1
                return None
            try:
                self.current.add(bytes(frames[3]), (index, count))
            except ProtocolError:
                self.current = None
                raise
            if not self.current.complete:
                return None
            done, self.current = self.current, None
            return done.finish()
        if t in (RELEASE, UPDATE):
            if (len(frames) == 3 and self.resumes_releases and self.current is not None and t == RELEASE
                    and self.head_frame == bytes(frames[2])):
                return None  # the same release again: continue it
            r = Reassembly(t, header)
            if len(frames) == 3:  # a stream's head
                self.current = r
                self.head_frame = bytes(frames[2])
                self.head_digest = crc32c.crc32c(self.head_frame)
                return None
            for chunk in frames[3:]:  # the one-message form
                r.add(bytes(chunk))
            return r.finish()
        if len(frames) != 3:
            raise ProtocolError("malformed", f"{TYPE_NAMES[t]} carries {len(frames) - 3} unexpected frames")
        return Message(t, header)
