"""Errors of the client's local state. Messages name files and reasons, never key material or passwords."""

from __future__ import annotations


class StateError(Exception):
    """Base class of every local-state error."""


class WrongStatePassword(StateError):
    """The state password (or key) does not decrypt the data: a wrong password, or the data was modified.

    Authenticated encryption cannot tell these two apart. Nothing on disk was changed.
    """


class StatePasswordRequired(StateError):
    """The state is encrypted and no state password was given."""


class CorruptState(StateError):
    """A state file is malformed: truncated, not one of our formats, or a missing salt for encrypted data."""


class SchemaTooNew(StateError):
    """The conversation database was written by a newer client; it is left untouched."""


class ConversationExists(StateError):
    """A conversation with that name, group id, channel id or DM peer already exists."""


class ConversationNotFound(StateError):
    """No conversation with that id."""


class StoreClosed(StateError):
    """The conversation store was closed."""
