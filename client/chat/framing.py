"""The chat client's inner framing: what a hybrid envelope carries, and what an MLS application message carries.

Two layers, both with the same small versioned TLV codec.

Envelope payload (the plaintext of ``seal_envelope``; one envelope per recipient)::

    version  u8   = 1
    kind     u8   1 = welcome, 2 = mls-message
    fields   repeated: tag u8 | length u32 (big-endian) | value

    welcome:      1 conversation kind  u8: 1 = dm, 2 = group             (required)
                  2 conversation name  UTF-8, the inviter's name of a group (groups; empty or absent for DMs)
                  3 channel id         16 bytes, the DM's channel         (required for DMs)
                  4 inviter            32-byte Ed25519 identity key       (required; checked against the
                                                                           group's members after joining)
                  5 MLS Welcome        TLS-encoded MLSMessage             (required)
                  7 replaces           group id of the group this one re-creates (optional: `/recreate`;
                                       kept only if the inviter was a member of that group)
    mls-message:  5 MLS message        TLS-encoded MLSMessage (PrivateMessage: commit, proposal or application)
                  6 sender             32-byte identity key the sender claims (optional; commits carry it so
                                       that a commit nobody can process can still be attributed)

MLS application message (the plaintext given to ``Vault.encrypt``)::

    version  u8   = 1
    kind     u8   1 = text, 2 = receipt, 3 = file
    text:         1 body     UTF-8 text                                   (required)
                  2 sent_at  u64 big-endian, milliseconds since the Unix epoch (the sender's clock)
    receipt:      3 receipt kind  u8: 1 = delivered, 2 = read                (required)
                  4 messages      one or more 32-byte message references     (required)
    file:         2 sent_at   as for text
                  5 name      UTF-8 file name, no directory                   (required)
                  6 size      u64 big-endian, bytes of the file               (required)
                  7 blob id   32 bytes: the node's id of the encrypted file   (required; SHA-256 of the blob)
                  8 key       32 bytes: the file's own ChaCha20-Poly1305 key  (required)
                  9 sha256    32 bytes: SHA-256 of the file                   (required)

A message reference names a message the way its sender stores it: SHA-256 of ``b"out" | MLS ciphertext``, which
every recipient can compute from the MLS message it processed. Receipts are sent only to the message's sender
and are not shown as messages.

Rules: a reader rejects another version or an unknown kind (`FrameError`), skips unknown tags (so later
versions can add optional fields without a version bump), and rejects a tag that appears twice, a field whose
length runs past the end, and a missing required field. Only authenticated data is parsed: the envelope
payload after HPKE opened it, the application content after MLS decrypted it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

FRAME_VERSION = 1

KIND_WELCOME = 1
KIND_MLS = 2

TAG_CONVERSATION_KIND = 1
TAG_NAME = 2
TAG_CHANNEL_ID = 3
TAG_INVITER = 4
TAG_MLS = 5
TAG_SENDER = 6
TAG_REPLACES = 7

CONVERSATION_DM = 1
CONVERSATION_GROUP = 2

CONTENT_VERSION = 1
CONTENT_TEXT = 1
CONTENT_RECEIPT = 2
TAG_BODY = 1
TAG_SENT_AT = 2
TAG_RECEIPT_KIND = 3
TAG_RECEIPT_OF = 4
RECEIPT_DELIVERED = 1
RECEIPT_READ = 2
MESSAGE_REF_LEN = 32
CONTENT_FILE = 3
TAG_FILE_NAME = 5
TAG_FILE_SIZE = 6
TAG_BLOB_ID = 7
TAG_FILE_KEY = 8
TAG_FILE_SHA256 = 9
DIGEST_LEN = 32

CHANNEL_ID_LEN = 16
IDENTITY_KEY_LEN = 32
_FIELD_HEADER = struct.Struct(">BI")
_U64 = struct.Struct(">Q")


class FrameError(ValueError):
    """Bytes that are not a frame this client understands."""


def encode_fields(version: int, kind: int, fields: list[tuple[int, bytes]]) -> bytes:
    parts = [bytes([version, kind])]
    for tag, value in fields:
        parts.append(_FIELD_HEADER.pack(tag, len(value)))
        parts.append(value)
    return b"".join(parts)


def decode_fields(data: bytes, version: int) -> tuple[int, dict[int, bytes]]:
    """(kind, tag -> value) of a frame of the given version; unknown tags are kept (callers ignore them)."""
    if len(data) < 2:
        raise FrameError("frame too short")
    if data[0] != version:
        raise FrameError(f"frame version {data[0]} (this client reads version {version})")
    kind = data[1]
    fields: dict[int, bytes] = {}
    offset = 2
    while offset < len(data):
        if offset + _FIELD_HEADER.size > len(data):
            raise FrameError("truncated field header")
        tag, length = _FIELD_HEADER.unpack_from(data, offset)
        offset += _FIELD_HEADER.size
        if offset + length > len(data):
            raise FrameError(f"field {tag} runs past the end of the frame")
        if tag in fields:
            raise FrameError(f"field {tag} appears twice")
        fields[tag] = data[offset : offset + length]
        offset += length
    return kind, fields


def _required(fields: dict[int, bytes], tag: int, what: str) -> bytes:
    value = fields.get(tag)
    if value is None:
        raise FrameError(f"missing {what}")
    return value


ConversationKindName = Literal["dm", "group"]


@dataclass(frozen=True)
class WelcomeFrame:
    conversation_kind: ConversationKindName
    name: str
    channel_id: bytes | None
    inviter: bytes
    welcome: bytes
    replaces: bytes | None = None

    def encode(self) -> bytes:
        fields = [
            (TAG_CONVERSATION_KIND, bytes([CONVERSATION_DM if self.conversation_kind == "dm" else CONVERSATION_GROUP]))
        ]
        if self.name:
            fields.append((TAG_NAME, self.name.encode()))
        if self.channel_id is not None:
            fields.append((TAG_CHANNEL_ID, self.channel_id))
        fields += [(TAG_INVITER, self.inviter), (TAG_MLS, self.welcome)]
        if self.replaces is not None:
            fields.append((TAG_REPLACES, self.replaces))
        return encode_fields(FRAME_VERSION, KIND_WELCOME, fields)


@dataclass(frozen=True)
class MlsFrame:
    message: bytes
    sender: bytes | None = None
    """The identity key the sender claims (not authenticated: MLS authenticates what the vault processes)."""

    def encode(self) -> bytes:
        fields = [(TAG_MLS, self.message)]
        if self.sender is not None:
            fields.append((TAG_SENDER, self.sender))
        return encode_fields(FRAME_VERSION, KIND_MLS, fields)


Frame = WelcomeFrame | MlsFrame


def decode_frame(data: bytes) -> Frame:
    kind, fields = decode_fields(data, FRAME_VERSION)
    if kind == KIND_MLS:
        sender = fields.get(TAG_SENDER)
        if sender is not None and len(sender) != IDENTITY_KEY_LEN:
            raise FrameError(f"an identity key is {IDENTITY_KEY_LEN} bytes")
        return MlsFrame(_required(fields, TAG_MLS, "MLS message"), sender)
    if kind != KIND_WELCOME:
        raise FrameError(f"unknown envelope kind {kind}")
    raw_kind = _required(fields, TAG_CONVERSATION_KIND, "conversation kind")
    if raw_kind not in (bytes([CONVERSATION_DM]), bytes([CONVERSATION_GROUP])):
        raise FrameError("unknown conversation kind")
    conversation_kind: ConversationKindName = "dm" if raw_kind[0] == CONVERSATION_DM else "group"
    try:
        name = fields.get(TAG_NAME, b"").decode()
    except UnicodeDecodeError:
        raise FrameError("conversation name is not UTF-8") from None
    channel_id = fields.get(TAG_CHANNEL_ID)
    if channel_id is not None and len(channel_id) != CHANNEL_ID_LEN:
        raise FrameError(f"a channel id is {CHANNEL_ID_LEN} bytes")
    if conversation_kind == "dm" and channel_id is None:
        raise FrameError("a DM welcome needs its channel id")
    inviter = _required(fields, TAG_INVITER, "inviter")
    if len(inviter) != IDENTITY_KEY_LEN:
        raise FrameError(f"an identity key is {IDENTITY_KEY_LEN} bytes")
    replaces = fields.get(TAG_REPLACES)
    if replaces is not None and not replaces:
        raise FrameError("an empty group id in replaces")
    return WelcomeFrame(
        conversation_kind, name, channel_id, inviter, _required(fields, TAG_MLS, "MLS Welcome"), replaces
    )


@dataclass(frozen=True)
class TextContent:
    body: str
    sent_at: float | None
    """Unix seconds by the sender's clock (millisecond precision)."""

    def encode(self) -> bytes:
        fields = [(TAG_BODY, self.body.encode())]
        if self.sent_at is not None:
            fields.append((TAG_SENT_AT, _U64.pack(max(0, round(self.sent_at * 1000)))))
        return encode_fields(CONTENT_VERSION, CONTENT_TEXT, fields)


ReceiptKind = Literal["delivered", "read"]


@dataclass(frozen=True)
class ReceiptContent:
    kind: ReceiptKind
    messages: tuple[bytes, ...]
    """References of the messages it is about (see the module docs)."""

    def encode(self) -> bytes:
        code = RECEIPT_DELIVERED if self.kind == "delivered" else RECEIPT_READ
        fields = [(TAG_RECEIPT_KIND, bytes([code])), (TAG_RECEIPT_OF, b"".join(self.messages))]
        return encode_fields(CONTENT_VERSION, CONTENT_RECEIPT, fields)


@dataclass(frozen=True)
class FileContent:
    name: str
    size: int
    blob_id: bytes
    key: bytes
    sha256: bytes
    sent_at: float | None

    def encode(self) -> bytes:
        fields = [
            (TAG_FILE_NAME, self.name.encode()),
            (TAG_FILE_SIZE, _U64.pack(self.size)),
            (TAG_BLOB_ID, self.blob_id),
            (TAG_FILE_KEY, self.key),
            (TAG_FILE_SHA256, self.sha256),
        ]
        if self.sent_at is not None:
            fields.append((TAG_SENT_AT, _U64.pack(max(0, round(self.sent_at * 1000)))))
        return encode_fields(CONTENT_VERSION, CONTENT_FILE, fields)


Content = TextContent | ReceiptContent | FileContent


def _decode_sent_at(fields: dict[int, bytes]) -> float | None:
    raw_sent = fields.get(TAG_SENT_AT)
    if raw_sent is None:
        return None
    if len(raw_sent) != _U64.size:
        raise FrameError("sent_at is 8 bytes")
    return float(_U64.unpack(raw_sent)[0] / 1000)


def _decode_file(fields: dict[int, bytes]) -> FileContent:
    try:
        name = _required(fields, TAG_FILE_NAME, "file name").decode()
    except UnicodeDecodeError:
        raise FrameError("file name is not UTF-8") from None
    raw_size = _required(fields, TAG_FILE_SIZE, "file size")
    if len(raw_size) != _U64.size:
        raise FrameError("file size is 8 bytes")
    digests = []
    for tag, what in ((TAG_BLOB_ID, "blob id"), (TAG_FILE_KEY, "file key"), (TAG_FILE_SHA256, "file sha256")):
        value = _required(fields, tag, what)
        if len(value) != DIGEST_LEN:
            raise FrameError(f"the {what} is {DIGEST_LEN} bytes")
        digests.append(value)
    blob_id, key, sha256 = digests
    return FileContent(name, _U64.unpack(raw_size)[0], blob_id, key, sha256, _decode_sent_at(fields))


def _decode_receipt(fields: dict[int, bytes]) -> ReceiptContent:
    code = _required(fields, TAG_RECEIPT_KIND, "receipt kind")
    if code not in (bytes([RECEIPT_DELIVERED]), bytes([RECEIPT_READ])):
        raise FrameError("unknown receipt kind")
    refs = _required(fields, TAG_RECEIPT_OF, "receipt messages")
    if not refs or len(refs) % MESSAGE_REF_LEN:
        raise FrameError(f"receipt messages are one or more references of {MESSAGE_REF_LEN} bytes")
    messages = tuple(refs[i : i + MESSAGE_REF_LEN] for i in range(0, len(refs), MESSAGE_REF_LEN))
    return ReceiptContent("delivered" if code[0] == RECEIPT_DELIVERED else "read", messages)


def decode_content(data: bytes) -> Content:
    kind, fields = decode_fields(data, CONTENT_VERSION)
    if kind == CONTENT_RECEIPT:
        return _decode_receipt(fields)
    if kind == CONTENT_FILE:
        return _decode_file(fields)
    if kind != CONTENT_TEXT:
        raise FrameError(f"unknown content kind {kind}")
    try:
        body = _required(fields, TAG_BODY, "message body").decode()
    except UnicodeDecodeError:
        raise FrameError("message body is not UTF-8") from None
    return TextContent(body, _decode_sent_at(fields))
