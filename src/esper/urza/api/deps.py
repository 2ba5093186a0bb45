"""Dependencies shared by Urza's routes: the app's context and bearer-token checks."""

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from esper.contracts.events import Event
from esper.urza.api.options import ApiOptions
from esper.urza.repository import UrzaRepository

SHA256_PATTERN = r"^[0-9a-f]{64}$"
KERNEL_ID_PATTERN = r"^k-[0-9a-f]{24}$"
TAG_PATTERN = r"^[a-z0-9][a-z0-9._:-]{0,62}$"

EventPublisher = Callable[[Event], object]
"""Something that announces an event on Oona (the bus's ``publish``)."""


class AuthError(PermissionError):
    """Raised when a request lacks the bearer token it needs."""


@dataclass(frozen=True)
class UrzaContext:
    """What the route handlers share, stored on ``app.state.urza``.

    Attributes:
        repository: The repository.
        options: Authentication and limits.
        publish: Announces events on Oona, when a bus is wired in.
    """

    repository: UrzaRepository
    options: ApiOptions
    publish: EventPublisher | None


def context(request: Request) -> UrzaContext:
    """Return the shared context of the app serving ``request``.

    Args:
        request: The request.

    Returns:
        The context.
    """
    return request.app.state.urza


def _check_token(options: ApiOptions, authorization: str | None) -> None:
    if options.token is None:
        return
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise AuthError("this endpoint needs 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(presented.strip().encode(), options.token.encode()):
        raise AuthError("the bearer token is not valid")


def require_write(
    urza: Annotated[UrzaContext, Depends(context)],
    authorization: Annotated[str | None, Header()] = None,
) -> UrzaContext:
    """Dependency of write endpoints: check the token unless writes are open.

    Args:
        urza: The shared context.
        authorization: The Authorization header.

    Returns:
        The context.
    """
    if not urza.options.writes_open:
        _check_token(urza.options, authorization)
    return urza


def require_read(
    urza: Annotated[UrzaContext, Depends(context)],
    authorization: Annotated[str | None, Header()] = None,
) -> UrzaContext:
    """Dependency of read endpoints: check the token when reads are protected.

    Args:
        urza: The shared context.
        authorization: The Authorization header.

    Returns:
        The context.
    """
    if urza.options.require_auth_for_reads:
        _check_token(urza.options, authorization)
    return urza


ReadContext = Annotated[UrzaContext, Depends(require_read)]
"""A route parameter that authorises a read."""

WriteContext = Annotated[UrzaContext, Depends(require_write)]
"""A route parameter that authorises a write."""
