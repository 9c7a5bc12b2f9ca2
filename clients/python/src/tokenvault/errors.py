"""Errors by API code.

Every error the service answers carries a stable ``error`` code, a human
``message`` and the ``request_id`` to find it in the service's logs; the
classes let callers branch without string matching::

    try:
        token = tv.get_token("fan-1", "spotify")
    except NeedsReauthError:
        show_reconnect_button()
"""

from typing import Any, Dict, Optional, Type

__all__ = [
    "TokenvaultError",
    "ValidationError",
    "UnauthorizedError",
    "ForbiddenError",
    "NotConnectedError",
    "NotFoundError",
    "NeedsReauthError",
    "ConflictError",
    "ProviderError",
    "ProviderUnavailableError",
    "IntegrationMisconfiguredError",
    "ServiceUnavailableError",
    "TransportError",
    "error_for",
]


class TokenvaultError(Exception):
    """Any error answered by the service (or the transport)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        request_id: Optional[str] = None,
        retry_after: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: The HTTP status (0 when no answer arrived).
        self.status = status
        #: The API's stable error code (``needs_reauth``, ``connection_not_found``, …).
        self.code = code
        #: The request's id, as logged by the service.
        self.request_id = request_id
        #: Seconds the service asked to wait before retrying (``Retry-After``).
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class ValidationError(TokenvaultError):
    """400: the request was malformed (``invalid_user_id``, ``invalid_scopes``, …)."""


class UnauthorizedError(TokenvaultError):
    """401: missing, unknown or revoked API key."""


class ForbiddenError(TokenvaultError):
    """403: the key's scope does not cover the operation."""


class NotConnectedError(TokenvaultError):
    """404 ``connection_not_found``: the user has not connected (or disconnected)."""


class NotFoundError(TokenvaultError):
    """Any other 404 (``unknown_integration``, ``bulk_action_not_found``, …)."""


class NeedsReauthError(TokenvaultError):
    """409 ``needs_reauth``: the grant was revoked or expired; show a reconnect button."""


class ConflictError(TokenvaultError):
    """Any other 409 (``bulk_action_finished``, ``stored_tokens_newer``)."""


class ProviderError(TokenvaultError):
    """502: the provider failed (``provider_error``, ``provider_unreachable``, …)."""


class ProviderUnavailableError(TokenvaultError):
    """503 ``provider_unavailable``: the token expired and the provider cannot
    refresh it now; ``retry_after`` says when to try again."""


class IntegrationMisconfiguredError(TokenvaultError):
    """503 ``integration_misconfigured``: the provider rejects the
    integration's client credentials."""


class ServiceUnavailableError(TokenvaultError):
    """Any other 503 (``database_unavailable``, ``integration_unavailable``, …)."""


class TransportError(TokenvaultError):
    """No answer: the connection failed (``connection_failed``) or the request
    timed out (``timeout``)."""


_BY_CODE: Dict[str, Type[TokenvaultError]] = {
    "connection_not_found": NotConnectedError,
    "needs_reauth": NeedsReauthError,
    "provider_unavailable": ProviderUnavailableError,
    "integration_misconfigured": IntegrationMisconfiguredError,
}

_BY_STATUS: Dict[int, Type[TokenvaultError]] = {
    400: ValidationError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    502: ProviderError,
    503: ServiceUnavailableError,
}


def error_for(status: int, body: Any, retry_after: Optional[int]) -> TokenvaultError:
    """The error for an answer with a non-2xx status and its parsed body."""
    fields = body if isinstance(body, dict) else {}
    code = fields.get("error")
    message = fields.get("message")
    request_id = fields.get("request_id")
    code = code if isinstance(code, str) else f"http_{status}"
    message = message if isinstance(message, str) else f"HTTP {status}"
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or TokenvaultError
    return cls(
        message,
        status=status,
        code=code,
        request_id=request_id if isinstance(request_id, str) else None,
        retry_after=retry_after,
    )
