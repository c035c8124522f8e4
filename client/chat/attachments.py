"""`Attachments`: files sent inside a conversation. The file is encrypted with a fresh key (ChaCha20-Poly1305;
the key is used once, so the nonce is fixed), stored on the node as a blob, and the blob's id, the key and the
file's SHA-256 travel inside the MLS message (`framing.FileContent`). A recipient fetches the blob and keeps the
file only if the blob is the one named (its SHA-256 is the id), it decrypts, and the result has the size and
SHA-256 that were sent: a blob changed on the node is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from quicnprotochat.client.state import Conversation, Message

from .context import ChatContext
from .errors import ChatError, MessageTooLarge
from .events import ErrorEvent, FileReceived
from .framing import FileContent
from .units import size_text

NONCE = bytes(12)
AAD = b"quicnprotochat attachment v1"
TAG_LEN = 16
"""What encryption adds to a file: the largest file is the node's blob limit minus this."""
DOWNLOADS = "files"


class AttachmentRefused(ChatError):
    """A fetched attachment is not the file that was sent."""


def seal_file(data: bytes) -> tuple[bytes, bytes]:
    """(fresh key, ciphertext) of a file."""
    key = ChaCha20Poly1305.generate_key()
    return key, ChaCha20Poly1305(key).encrypt(NONCE, data, AAD)


def open_file(content: FileContent, blob: bytes) -> bytes:
    """The file a blob holds, checked against what the message says; AttachmentRefused otherwise."""
    if hashlib.sha256(blob).digest() != content.blob_id:
        raise AttachmentRefused(f"refused the file {content.name!r}: the node returned other bytes than were sent")
    try:
        data = ChaCha20Poly1305(content.key).decrypt(NONCE, blob, AAD)
    except InvalidTag:
        raise AttachmentRefused(f"refused the file {content.name!r}: it does not decrypt") from None
    if len(data) != content.size or hashlib.sha256(data).digest() != content.sha256:
        raise AttachmentRefused(f"refused the file {content.name!r}: it is not the file that was sent")
    return data


def safe_name(name: str) -> str:
    """A file name from a peer, made harmless: no directories, no hidden or empty names."""
    base = re.sub(r"[^\w.\- ]", "_", os.path.basename(name.replace("\\", "/"))).strip(" .")
    return base or "file"


def describe_file(content: FileContent) -> str:
    return f"[file] {content.name} ({size_text(content.size)})"


class Attachments:
    def __init__(self, context: ChatContext) -> None:
        self._context = context

    @property
    def directory(self) -> Path:
        return self._context.state.dir.root / DOWNLOADS

    async def upload(self, path: Path, max_blob_bytes: int | None, sent_at: float) -> FileContent:
        """Encrypt the file at `path` and store it on the node; the content to send in the MLS message."""
        try:
            data = await asyncio.to_thread(lambda: path.expanduser().read_bytes())
        except OSError as error:
            raise ChatError(f"cannot read {path}: {error.strerror or error}") from None
        if max_blob_bytes is not None and len(data) + TAG_LEN > max_blob_bytes:
            raise MessageTooLarge(
                f"the file is too large: {size_text(len(data))}, and the node keeps files of at most"
                f" {size_text(max_blob_bytes - TAG_LEN)} ({max_blob_bytes - TAG_LEN} bytes); nothing was sent"
            )
        key, blob = await asyncio.to_thread(seal_file, data)
        blob_id = await self._context.guard(self._context.node.put_blob(blob))
        return FileContent(path.name, len(data), blob_id, key, hashlib.sha256(data).digest(), sent_at)

    async def fetch(self, conversation: Conversation, message: Message, content: FileContent) -> None:
        """Fetch, check and save a received file; reports `FileReceived` (with the path, or why it was refused)."""
        context = self._context
        try:
            blob = await context.guard(context.node.get_blob(content.blob_id))
            data = open_file(content, blob)
            path = await asyncio.to_thread(self._save, message, content, data)
        except ChatError as error:
            context.emit(ErrorEvent(str(error), error))
            context.emit(FileReceived(conversation, message, content.name, None, str(error)))
            return
        context.emit(FileReceived(conversation, message, content.name, path, None))

    def _save(self, message: Message, content: FileContent, data: bytes) -> Path:
        directory = self.directory
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / f"{message.id}-{safe_name(content.name)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return path
