"""Test helper: a copy of a GGUF file with one string of metadata replaced (a hostile chat template)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _read(handle, fmt: str) -> int:  # noqa: ANN001 - a binary file
    return struct.unpack("<" + fmt, handle.read(struct.calcsize(fmt)))[0]


def _skip(handle, kind: int) -> None:  # noqa: ANN001 - a binary file
    if kind in _SCALARS:
        handle.read(_SCALARS[kind])
    elif kind == _STRING:
        handle.read(_read(handle, "Q"))
    elif kind == _ARRAY:
        item_kind, count = _read(handle, "I"), _read(handle, "Q")
        for _ in range(count):
            _skip(handle, item_kind)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def with_metadata_string(source: Path, target: Path, key: str, value: str) -> Path:
    """Copy `source` to `target` with the string metadata `key` set to `value` (added when missing)."""
    with open(source, "rb") as handle:
        magic, version = handle.read(4), _read(handle, "I")
        n_tensors, n_kv = _read(handle, "Q"), _read(handle, "Q")
        entries: list[bytes] = []
        alignment = 32
        found = False
        for _ in range(n_kv):
            start = handle.tell()
            name = handle.read(_read(handle, "Q"))
            kind = _read(handle, "I")
            value_start = handle.tell()
            _skip(handle, kind)
            end = handle.tell()
            if name == b"general.alignment":
                handle.seek(value_start)
                alignment = _read(handle, "I")
                handle.seek(end)
            if name == key.encode():
                found = True
                entries.append(_string(name) + struct.pack("<I", _STRING) + _string(value.encode()))
            else:
                handle.seek(start)
                entries.append(handle.read(end - start))
        if not found:
            entries.append(_string(key.encode()) + struct.pack("<I", _STRING) + _string(value.encode()))
        tensors_start = handle.tell()
        for _ in range(n_tensors):
            handle.read(_read(handle, "Q"))
            handle.read(8 * _read(handle, "I"))
            handle.read(4 + 8)
        tensors_end = handle.tell()
        handle.seek(tensors_start)
        tensor_table = handle.read(tensors_end - tensors_start)
        old_data = -(-(tensors_start + len(tensor_table)) // alignment) * alignment
        header = magic + struct.pack("<IQQ", version, n_tensors, len(entries)) + b"".join(entries) + tensor_table
        with open(target, "wb") as out:
            out.write(header + b"\0" * (-len(header) % alignment))
            handle.seek(old_data)
            shutil.copyfileobj(handle, out, 1 << 20)
    return target
