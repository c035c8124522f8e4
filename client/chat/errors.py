"""Errors of the conversation engine. Each says in one sentence what went wrong; none carries secrets."""

from __future__ import annotations


class ChatError(Exception):
    """Base class: a chat operation could not be done. `str(error)` is meant for the user."""


class NodeUnavailable(ChatError):
    """The node cannot be reached (down, unreachable, or the connection dropped)."""


class LoginFailed(ChatError):
    """Registration or login was refused (wrong username or password, taken username, another identity key)."""


class PasswordRequired(LoginFailed):
    """No cached session is usable and no account password was given."""


class StateUnavailable(ChatError):
    """The local state directory cannot be opened (wrong state password, password needed, another account)."""


class UserNotFound(ChatError):
    """No account with that username on the node."""


class NoKeyPackage(ChatError):
    """The peer has no KeyPackage left on the node (they have to come online to publish more)."""


class NoHybridKey(ChatError):
    """The peer has not published a hybrid (X-Wing) key, so nothing can be sealed to them."""


class UnknownConversation(ChatError):
    """No local conversation by that name or id."""


class NotAllowed(ChatError):
    """The operation does not apply here (inviting into a DM, sending after being removed, ...)."""


class DeliveryFailed(ChatError):
    """Some recipients did not get a message; `failed` names them (username or key hex)."""

    def __init__(self, message: str, failed: list[str]) -> None:
        super().__init__(message)
        self.failed = failed


class MessageTooLarge(ChatError):
    """The message is larger than the node accepts (checked before anything is sent)."""


class IdentityKeyChanged(ChatError):
    """The node gives another identity key for a known contact: nothing is sent to them until the user accepts
    it (`ChatClient.trust`). `str(error)` is the warning to show."""

    def __init__(self, message: str, username: str) -> None:
        super().__init__(message)
        self.username = username
