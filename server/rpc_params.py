"""Reading a call's parameters into plain Python values, refusing malformed ones with a reason.

pycapnp decodes parameters lazily and raises library exceptions (kj's, or UnicodeDecodeError) wherever a field
is touched, and those would reach the caller as `internal:`. Here every field is read once, eagerly, in the
schema's order: Text must be NUL-terminated UTF-8 (no lone surrogates), Data and lists must be what the schema
says (not a struct pointer, not out of bounds), and the whole message must stay within the traversal limit. A
field that fails is reported by name with a reason of our own; library texts never reach the caller.

Every call of every method goes through here, so a struct's readers are worked out once from its schema
(`StructReader`), not per call: each field is read by its schema field (pycapnp's `_get_by_field`, a third of
the cost of attribute access, which first misses the type's attributes and then looks the name up), with a
converter chosen for its type.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import capnp  # type: ignore[import-untyped]

Convert = Callable[[Any], Any]
"""A field's raw pycapnp value -> its plain value (raises on a malformed one)."""

_READ_FAULTS = (capnp.KjException, UnicodeError, TypeError, ValueError, AttributeError)


class MalformedParams(Exception):
    """A parameter could not be read; `decoded` holds the fields read before it (`auth` may be among them)."""

    def __init__(self, field: str, reason: str, decoded: dict[str, Any]) -> None:
        super().__init__(f"{field} {reason}")
        self.field = field
        self.reason = reason
        self.decoded = decoded


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


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise TypeError("text expected")
    # Python's strict UTF-8 decoding refuses lone surrogates already; re-encoding proves it.
    raw.encode("utf-8")
    return raw


def _enum(raw: Any) -> Any:
    # An unknown enumerant would otherwise surface as pycapnp's `UnknownValue(n)`.
    if not isinstance(raw, str):
        raise TypeError("unknown enum value")
    return raw


def _as_is(raw: Any) -> Any:
    return raw


def _data_list(raw: Any) -> list[bytes]:
    return [bytes(item) for item in raw]


def _text_list(raw: Any) -> list[str]:
    return [str(item) for item in raw]


def _converter(field: Any) -> Convert:
    slot_type = field.proto.slot.type
    kind = slot_type.which()
    if kind == "text":
        return _text
    if kind == "data":
        return bytes
    if kind == "enum":
        return _enum
    if kind == "struct":
        return StructReader(field.schema).namespace
    if kind == "list":
        element = slot_type.list.elementType.which()
        if element == "data":
            return _data_list
        if element == "text":
            return _text_list
        if element == "struct":
            item = StructReader(field.schema.elementType).namespace
            return lambda raw: [item(value) for value in raw]
        return list
    return _as_is


class StructReader:
    """Every field of one struct type, read eagerly (nested structs too), `auth` first: a call that also carries
    a malformed parameter is authenticated before it is judged."""

    def __init__(self, schema: Any) -> None:
        names = sorted(schema.fieldnames, key=lambda name: name != "auth")
        self._fields: tuple[tuple[str, Any, Convert], ...] = tuple(
            (name, schema.fields[name], _converter(schema.fields[name])) for name in names
        )

    def values(self, reader: Any) -> dict[str, Any]:
        """Field name -> plain value; raises MalformedParams naming the first field that cannot be read."""
        decoded: dict[str, Any] = {}
        get = reader._get_by_field  # pycapnp is pinned exactly (pyproject.toml): see the module doc
        for name, field, convert in self._fields:
            try:
                decoded[name] = convert(get(field))
            except _READ_FAULTS as error:
                raise MalformedParams(name, _reason(error), decoded) from None
        return decoded

    def namespace(self, reader: Any) -> SimpleNamespace:
        """A nested struct's fields as attributes (a fault propagates to the parameter that holds it)."""
        get = reader._get_by_field
        return SimpleNamespace(**{name: convert(get(field)) for name, field, convert in self._fields})
