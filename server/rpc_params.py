"""Reading a call's parameters into plain Python values, refusing malformed ones with a reason.

pycapnp decodes parameters lazily and raises library exceptions (kj's, or UnicodeDecodeError) wherever a field
is touched, and those would reach the caller as `internal:`. Here every field is read once, eagerly, in the
schema's order: Text must be NUL-terminated UTF-8 (no lone surrogates), Data and lists must be what the schema
says (not a struct pointer, not out of bounds), and the whole message must stay within the traversal limit. A
field that fails is reported by name with a reason of our own; library texts never reach the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import capnp  # type: ignore[import-untyped]


class MalformedParams(Exception):
    """A parameter could not be read; `decoded` holds the fields read before it (`auth` may be among them)."""

    def __init__(self, field: str, reason: str, decoded: dict[str, Any]) -> None:
        super().__init__(f"{field} {reason}")
        self.field = field
        self.reason = reason
        self.decoded = decoded


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str
    element: str | None  # element kind of a list


def _fields(struct_schema: Any) -> list[_Field]:
    fields = []
    # `auth` first: a call that also carries a malformed parameter is authenticated before it is judged.
    for name in sorted(struct_schema.fieldnames, key=lambda name: name != "auth"):
        slot_type = struct_schema.fields[name].proto.slot.type
        kind = slot_type.which()
        element = slot_type.list.elementType.which() if kind == "list" else None
        fields.append(_Field(name, kind, element))
    return fields


_FIELD_CACHE: dict[int, list[_Field]] = {}


def _reason(error: BaseException) -> str:
    if isinstance(error, UnicodeError):
        return "is not valid UTF-8 text"
    text = str(error).lower()
    if "traversal limit" in text or "nesting limit" in text:
        return "makes the call exceed the message traversal limit (too large or too many pointers)"
    if "'\\0'" in text or "nul-terminated" in text:
        return "is not NUL-terminated text"
    if "out-of-bounds" in text or "out of bounds" in text or "ends prematurely" in text or "segment" in text:
        return "points outside the message"
    return "has the wrong type (malformed pointer)"


def _value(field: _Field, raw: Any) -> Any:
    if field.kind == "text":
        if not isinstance(raw, str):
            raise TypeError("text expected")
        # Python's strict UTF-8 decoding refuses lone surrogates already; re-encoding proves it.
        raw.encode("utf-8")
        return raw
    if field.kind == "data":
        return bytes(raw)
    if field.kind == "list":
        if field.element == "data":
            return [bytes(item) for item in raw]
        if field.element == "text":
            return [str(item) for item in raw]
        if field.element == "struct":
            return [read_struct(item) for item in raw]
        return list(raw)
    if field.kind == "struct":
        return read_struct(raw)
    if field.kind == "enum":
        # An unknown enumerant would otherwise surface as pycapnp's `UnknownValue(n)`.
        if not isinstance(raw, str):
            raise TypeError("unknown enum value")
        return raw
    return raw


def read_struct(reader: Any) -> SimpleNamespace:
    """Every field of a struct, read eagerly (nested structs too)."""
    values = {}
    for field in _struct_fields(reader.schema):
        values[field.name] = _value(field, getattr(reader, field.name))
    return SimpleNamespace(**values)


def _struct_fields(schema: Any) -> list[_Field]:
    key = schema.node.id
    fields = _FIELD_CACHE.get(key)
    if fields is None:
        fields = _FIELD_CACHE[key] = _fields(schema)
    return fields


def read_params(params: Any) -> dict[str, Any]:
    """Parameter name -> plain value; raises MalformedParams naming the first field that cannot be read."""
    decoded: dict[str, Any] = {}
    for field in _struct_fields(params.schema):
        try:
            decoded[field.name] = _value(field, getattr(params, field.name))
        except (capnp.KjException, UnicodeError, TypeError, ValueError, AttributeError) as error:
            raise MalformedParams(field.name, _reason(error), decoded) from None
    return decoded
