"""ONNX external data that stays in the model's folder: refuse a file from a stranger that would make onnxruntime
read other files.

An ONNX file may keep its tensors in "external data" files that it names by path. A hostile file could name any
file on the machine (``../../home/user/.ssh/id_rsa``, ``/etc/shadow``, or an innocent name that is a symlink to
one), which onnxruntime would then read into the model's weights (and its outputs could leak). onnxruntime 1.32
validates these paths itself; onnxruntime 1.15 (checked) reads a ``../`` location or a symlink without a word, and
the exports promise to load on such older runtimes. :func:`check_external_data`
refuses such a file before onnx or onnxruntime opens it. It reads the protobuf wire format itself (memory-mapped,
skipping the weights), so it needs neither the ``onnx`` package nor torch: the serving client calls it too.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from milsdk.errors import ArtifactError

__all__ = ["check_external_data", "external_data_locations"]

# Field numbers of onnx.proto that can hold a TensorProto, by message: {message: {field: message of that field}}.
_NESTED = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 8, 13  # TensorProto.name, TensorProto.external_data (key 1, value 2)
_MAX_DEPTH = 64  # subgraphs nest (If / Loop bodies); a deeper file is refused rather than recursed into


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed(f"truncated varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited field) of one protobuf message."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Malformed(f"field {field} runs past its message at byte {pos}")
            yield field, wire, (pos, pos + length)
            pos += length
        else:  # groups (3, 4) do not occur in onnx.proto
            raise _Malformed(f"unexpected wire type {wire} at byte {pos}")
    if pos != end:
        raise _Malformed(f"message overruns its length at byte {end}")


def _walk(buf: memoryview, start: int, end: int, kind: str, depth: int, found: list[tuple[str, str]]) -> None:
    if depth > _MAX_DEPTH:
        raise _Malformed(f"subgraphs nested deeper than {_MAX_DEPTH}")
    if kind == "tensor":
        name, locations = "", []
        for field, wire, value in _fields(buf, start, end):
            if wire != 2:
                continue
            if field == _TENSOR_NAME:
                name = bytes(buf[value[0] : value[1]]).decode("utf-8", "replace")
            elif field == _TENSOR_EXTERNAL_DATA:
                entry = {f: bytes(buf[v[0] : v[1]]) for f, w, v in _fields(buf, *value) if w == 2}
                if entry.get(1) == b"location":
                    locations.append(entry.get(2, b"").decode("utf-8", "replace"))
        found.extend((name, location) for location in locations)
        return
    nested = _NESTED[kind]
    for field, wire, value in _fields(buf, start, end):
        if wire == 2 and field in nested:
            _walk(buf, value[0], value[1], nested[field], depth + 1, found)


def external_data_locations(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Every (tensor name, location) pair of an ONNX file's external data, read from the protobuf wire format.

    Raises:
        ArtifactError: the file is missing, unreadable or not a well-formed protobuf.
    """
    path = Path(path)
    found: list[tuple[str, str]] = []
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise ArtifactError(f"{path}: not a readable ONNX model (empty file)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                buf = memoryview(mapped)
                try:
                    _walk(buf, 0, len(buf), "model", 0, found)
                finally:
                    buf.release()
    except _Malformed as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model (malformed protobuf: {exc})") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read it ({' '.join(str(exc).split())})") from None
    return found


def check_external_data(path: str | os.PathLike) -> None:
    """Refuse an ONNX file whose external data is not a regular file inside the model's own folder.

    Call it before handing a file to onnxruntime or ``onnx.load``. A location must be relative, stay inside
    the folder of ``path`` (no ``..`` out of it), and not pass through a symlink (a link could point anywhere;
    the exporter never writes one).

    Raises:
        ArtifactError: one line naming the file, the tensor and its location, and what is wrong.
    """
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path}: is a directory, not an artifact file (.onnx or .pt)")
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    folder = path.absolute().parent
    real_folder = folder.resolve()
    for tensor, location in external_data_locations(path):
        where = f"{path}: refused: tensor {tensor!r} keeps its data in {location!r}"
        if not location or "\x00" in location:
            raise ArtifactError(f"{where}, which is not a file name")
        relative = Path(location)
        if relative.is_absolute() or relative.drive or location.startswith(("/", "\\")):
            raise ArtifactError(f"{where}, an absolute path outside the model's folder {folder}")
        if ".." in relative.parts or ".." in location.replace("\\", "/").split("/"):
            raise ArtifactError(f"{where}, which points outside the model's folder {folder}")
        current = folder
        for part in relative.parts:
            current = current / part
            if current.is_symlink():
                raise ArtifactError(f"{where}, which passes through the symlink {current}")
        target = (folder / relative).resolve()
        if not target.is_relative_to(real_folder):
            raise ArtifactError(f"{where}, which points outside the model's folder {folder}")
        if not target.is_file():
            raise ArtifactError(f"{where}, which is not a file in {folder}")
