"""Triton model configs (config.pbtxt) read and written through Triton's own schema.

The schema is ``inference.ModelConfig`` from Triton's model_config.proto, compiled into tritonclient
(``tritonclient.grpc.model_config_pb2``); protobuf's text format reads and writes it. A config Triton would
refuse to parse (an unknown field, a wrong enum value, a string where a number goes) is refused here, with the
file, line, field and protobuf's reason, instead of at server start.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from milsdk.errors import ArtifactError

__all__ = ["model_config_schema", "model_config_text", "parse_model_config"]

_FIELD_HERE = re.compile(r"([A-Za-z_]\w*)\s*[:{<\[]")
_FIELD_BEFORE = re.compile(r"([A-Za-z_]\w*)\s*:\s*\[?[^:\[\]{}<>]*$")


def model_config_schema() -> Any:
    """The ``model_config_pb2`` module (``ModelConfig``, ``DataType``, ``ModelInstanceGroup``, ...)."""
    try:
        import tritonclient.grpc.model_config_pb2 as schema
    except ImportError as exc:  # an install without tritonclient's gRPC part
        raise ArtifactError(
            f"Triton configs need tritonclient's model_config_pb2 ({exc}); pip install 'tritonclient[grpc]'"
        ) from None
    return schema


def _field_at(line: str, column: int) -> str | None:
    """The config field a text-format error points at: the name at ``column`` (1-based) when the error is on a
    field name, else the field whose value holds that column."""
    if column - 1 >= len(line.rstrip()):  # past the line's end: the text ended early, no field is at fault
        return None
    here = _FIELD_HERE.match(line, max(column - 1, 0))
    if here:
        return here.group(1)
    before = _FIELD_BEFORE.search(line[: max(column - 1, 0)])
    return before.group(1) if before else None


def parse_model_config(text: str, source: str = "config.pbtxt") -> Any:
    """Parse a config.pbtxt into a ``ModelConfig`` message (Triton's schema).

    Raises:
        ArtifactError: ``"<source> line L, field F: <protobuf's reason>"`` for text Triton would not parse.
    """
    from google.protobuf import text_format

    schema = model_config_schema()
    try:
        return text_format.Parse(text, schema.ModelConfig())
    except text_format.ParseError as exc:
        line_no, column = exc.GetLine() or 0, exc.GetColumn() or 0
        # protobuf prefixes "L:C : 'the whole line': "; the line can be long (the metadata parameter)
        reason = re.sub(r"^\d+:\d+ : (?:'.*?': )?", "", str(exc), count=1)
        lines = text.splitlines()
        unclosed = re.match(r'Expected "[}>\]]"', reason)  # a block left open: no one field is at fault
        field = _field_at(lines[line_no - 1], column) if 0 < line_no <= len(lines) and not unclosed else None
        where = f"line {line_no}" + (f", field {field!r}" if field else "")
        raise ArtifactError(f"{source} {where}: {reason}") from None


def model_config_text(config: Any, comments: Sequence[str] = ()) -> str:
    """The text format of a ``ModelConfig`` message, after ``comments`` (each becomes a ``#`` line).

    Raises:
        ArtifactError: a required field (``name``) is empty.
    """
    from google.protobuf import text_format

    if not config.name:
        raise ArtifactError("Triton config: field 'name' is empty")
    head = "".join(f"# {line}\n" for comment in comments for line in comment.splitlines())
    return head + text_format.MessageToString(config)
