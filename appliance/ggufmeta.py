"""A small GGUF header reader: the key/value metadata, never the tensors.

Enough to size the KV cache of a downloaded model (block count, KV heads, key
and value lengths) without loading it, without the `gguf` package, and safely
on a file from the internet: lengths and counts are bounded, so a hostile header
cannot make us allocate gigabytes or loop forever.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from appliance.errors import ConfigError

MAGIC = b"GGUF"
MAX_STRING = 64 * 1024 * 1024
MAX_KV = 100_000
MAX_ARRAY = 10_000_000
# Numeric arrays up to this length are kept (per-layer head counts); longer ones are skipped.
KEEP_ARRAY = 4096

_SCALARS: dict[int, tuple[str, int]] = {
    0: ("B", 1),
    1: ("b", 1),
    2: ("H", 2),
    3: ("h", 2),
    4: ("I", 4),
    5: ("i", 4),
    6: ("f", 4),
    7: ("?", 1),
    10: ("Q", 8),
    11: ("q", 8),
    12: ("d", 8),
}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, handle: BinaryIO, endian: str) -> None:
        self.handle = handle
        self.endian = endian

    def exact(self, n: int) -> bytes:
        data = self.handle.read(n)
        if len(data) != n:
            raise ValueError("truncated header")
        return data

    def unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(self.endian + fmt, self.exact(size))[0]

    def string(self) -> str:
        length = self.unpack("Q", 8)
        if length > MAX_STRING:
            raise ValueError(f"string of {length} bytes")
        return self.exact(length).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(*_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind = self.unpack("I", 4)
            count = self.unpack("Q", 8)
            if count > MAX_ARRAY:
                raise ValueError(f"array of {count} items")
            if item_kind in _SCALARS:
                fmt, size = _SCALARS[item_kind]
                if count <= KEEP_ARRAY:
                    return list(struct.unpack(f"{self.endian}{count}{fmt}", self.exact(size * count)))
                self.handle.seek(size * count, 1)
                return None
            items = [self.value(item_kind) for _ in range(count)]
            return items if count <= KEEP_ARRAY else None
        raise ValueError(f"unknown value type {kind}")


def read_metadata(path: Path) -> dict[str, Any]:
    """Every key/value pair of a GGUF header (long arrays such as the vocabulary come back as None)."""
    try:
        with path.open("rb") as handle:
            if handle.read(4) != MAGIC:
                raise ConfigError(f"{path} is not a GGUF file", "download the model again with `appliance install`")
            raw_version = handle.read(4)
            endian = "<" if struct.unpack("<I", raw_version)[0] < 0x10000 else ">"
            reader = _Reader(handle, endian)
            version = struct.unpack(endian + "I", raw_version)[0]
            if version < 2:
                raise ValueError(f"GGUF version {version} is too old")
            reader.unpack("Q", 8)  # tensor count
            kv_count = reader.unpack("Q", 8)
            if kv_count > MAX_KV:
                raise ValueError(f"{kv_count} metadata keys")
            metadata: dict[str, Any] = {"GGUF.version": version}
            for _ in range(kv_count):
                key = reader.string()
                metadata[key] = reader.value(reader.unpack("I", 4))
            return metadata
    except (ValueError, struct.error) as exc:
        raise ConfigError(f"{path} has a damaged GGUF header ({exc})", "delete it and run `appliance install`") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", "check the path and permissions") from exc


@dataclass(frozen=True)
class KvShape:
    """What one token costs in the KV cache: per layer, KV heads x (key + value) lengths."""

    block_count: int
    head_count_kv: int
    key_length: int
    value_length: int
    architecture: str = ""
    context_length: int = 0  # what the model was trained for; 0 when unknown

    def elements_per_token(self) -> int:
        return self.block_count * self.head_count_kv * (self.key_length + self.value_length)


def _scalar(value: Any) -> int:
    if isinstance(value, list):  # per-layer values: the cache is sized by their sum / count
        return round(sum(value) / len(value)) if value else 0
    return int(value or 0)


def kv_shape_from_metadata(metadata: dict[str, Any]) -> KvShape:
    arch = str(metadata.get("general.architecture", ""))

    def get(key: str) -> Any:
        return metadata.get(f"{arch}.{key}")

    blocks = _scalar(get("block_count"))
    heads = _scalar(get("attention.head_count"))
    kv_heads = _scalar(get("attention.head_count_kv")) or heads
    embd = _scalar(get("embedding_length"))
    head_dim = embd // heads if heads else 0
    key_length = _scalar(get("attention.key_length")) or head_dim
    value_length = _scalar(get("attention.value_length")) or head_dim
    if not (blocks and kv_heads and key_length and value_length):
        raise ConfigError(
            f"the GGUF metadata of architecture '{arch}' does not give the KV cache shape",
            "set [model] context_length by hand",
        )
    return KvShape(blocks, kv_heads, key_length, value_length, arch, _scalar(get("context_length")))


def read_kv_shape(path: Path) -> KvShape:
    return kv_shape_from_metadata(read_metadata(path))
