"""Turning store errors into what the caller is told."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from quicnprotochat.common.errors import AlreadyExists, Internal, NotFound, ResourceExhausted
from quicnprotochat.server import store


@contextmanager
def store_errors() -> Iterator[None]:
    try:
        yield
    except store.LimitExceeded as error:
        raise ResourceExhausted(str(error)) from None
    except store.AlreadyExists as error:
        raise AlreadyExists(str(error)) from None
    except store.NotFound as error:
        raise NotFound(str(error)) from None
    except store.StoreClosed:
        raise Internal("the node is shutting down") from None
