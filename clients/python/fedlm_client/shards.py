"""FedLM's prepared data: `manifest.json` and token shards (`fedlm data prepare`).

A shard is a 64-byte header (magic "FEDLMTOK", format version 1, token width 2 or 4, token
count, SHA-256 of the tokens, 8 reserved bytes) followed by the tokens, little-endian.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np

HEADER = 64


class DataError(Exception):
    pass


def read_shard(path: str, verify: bool = True) -> np.ndarray:
    """The tokens of one shard, memory-mapped, after checking its header (and checksum)."""
    with open(path, "rb") as f:
        head = f.read(HEADER)
    if len(head) < HEADER or head[:8] != b"FEDLMTOK":
        raise DataError(f"{path}: not a FedLM token shard")
    version, width, count = struct.unpack("<IIQ", head[8:24])
    if version != 1 or width not in (2, 4):
        raise DataError(f"{path}: shard format {version}, token width {width} (this client reads format 1, width 2 or 4)")
    if os.path.getsize(path) != HEADER + width * count:
        raise DataError(f"{path}: {os.path.getsize(path)} bytes, the header announces {HEADER + width * count}")
    tokens = np.memmap(path, dtype="<u2" if width == 2 else "<u4", mode="r", offset=HEADER, shape=(count,))
    if verify and hashlib.sha256(tokens.tobytes()).digest() != head[24:56]:
        raise DataError(f"{path}: the tokens do not match the header's SHA-256")
    return tokens


class TokenData:
    """The train (or validation) shards of some clusters of a prepared data directory."""

    def __init__(self, directory: str, clusters=None, split: str = "train"):
        try:
            with open(os.path.join(directory, "manifest.json")) as f:
                manifest = json.load(f)
        except OSError as e:
            raise DataError(f"{directory}: no manifest.json ({e.strerror}); prepare the data with `fedlm data prepare`")
        self.vocabulary = int(manifest["vocabularySize"])
        known = [c["name"] for c in manifest["clusters"]]
        wanted = clusters or known
        for c in wanted:
            if c not in known:
                raise DataError(f"{directory}: no cluster named '{c}' (there are: {', '.join(known)})")
        self.shards = []
        for c in manifest["clusters"]:
            if c["name"] not in wanted:
                continue
            for source in c["sources"]:
                for shard in source.get(split, []):
                    self.shards.append(read_shard(os.path.join(directory, shard["file"])))
        if not self.shards:
            raise DataError(f"{directory}: no {split} shards in {', '.join(wanted)}")

    def batch(self, rng: np.random.Generator, batch: int, sequence: int):
        """`batch` windows of sequence + 1 tokens, uniformly over every position of the shards:
        (inputs, targets) as int64 arrays [batch, sequence]."""
        usable = [s for s in self.shards if len(s) > sequence + 1]
        if not usable:
            raise DataError(f"no shard holds more than {sequence + 1} tokens")
        spans = np.array([len(s) - sequence - 1 for s in usable], dtype=np.int64)
        picks = rng.integers(0, spans.sum(), size=batch)
        bounds = np.cumsum(spans)
        rows = []
        for p in picks:
            k = int(np.searchsorted(bounds, p, side="right"))
            start = int(p - (bounds[k - 1] if k else 0))
            rows.append(np.asarray(usable[k][start:start + sequence + 1], dtype=np.int64))
        windows = np.stack(rows)
        return windows[:, :-1], windows[:, 1:]


def documents(path: str):
    """The documents of a text file: the whole file, or one per line of a `.jsonl` file (its
    `text` field); either may be gzip-compressed (`.gz`). A file that is not UTF-8 text is skipped."""
    import gzip
    import json
    name = path[:-3] if path.endswith(".gz") else path
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                text = handle.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        if isinstance(e, UnicodeDecodeError):
            return []  # not text
        raise DataError(f"{path}: {e}")
    if not name.endswith(".jsonl"):
        return [text]
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise DataError(f"{path}:{number}: not a JSON object")
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{number}: no string field 'text'")
        out.append(record["text"])
    return out


class TextData:
    """Plain text files tokenized with the federation's tokenizer (`tokenizer.json`, which the
    `tokenizers` library reads exactly as FedLM's tokenizer does): for a member that has text but
    no FedLM installation. Files are read whole (folders recursively), one document each, or a
    document per line of a JSONL file; gzip-compressed files too."""

    def __init__(self, tokenizer_path: str, paths: list):
        from tokenizers import Tokenizer
        try:
            tokenizer = Tokenizer.from_file(tokenizer_path)
        except Exception as e:  # tokenizers raises plain Exceptions
            raise DataError(f"{tokenizer_path}: not a tokenizer.json ({e})")
        self.vocabulary = tokenizer.get_vocab_size()
        files = []
        for p in paths:
            if os.path.isdir(p):
                files += sorted(os.path.join(d, f) for d, _, names in os.walk(p) for f in names)
            elif os.path.isfile(p):
                files.append(p)
            else:
                raise DataError(f"{p}: no such file or folder")
        self.shards = []
        for f in files:
            for text in documents(f):
                ids = tokenizer.encode(text).ids
                if ids:
                    self.shards.append(np.asarray(ids, dtype=np.uint32))
        if not self.shards:
            raise DataError(f"no text in {', '.join(paths)}")

    batch = TokenData.batch
