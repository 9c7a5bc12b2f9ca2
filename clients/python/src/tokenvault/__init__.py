"""tokenvault: valid OAuth tokens for your users' connected accounts.

    from tokenvault import Tokenvault, NeedsReauthError

    tv = Tokenvault("http://127.0.0.1:8080", api_key)
    token = tv.get_token("fan-1", "spotify")   # .access_token, .expires_at, .scopes

``AsyncTokenvault`` is the same API for asyncio. Bodies are the JSON objects
the service sends, typed as the TypedDicts in :mod:`tokenvault.models`.
"""

from . import models
from ._async import AsyncProxyResponse, AsyncTokenvault
from ._sync import ProxyResponse, Tokenvault
from ._version import __version__
from .errors import (
    ConflictError,
    ForbiddenError,
    IntegrationMisconfiguredError,
    NeedsReauthError,
    NotConnectedError,
    NotFoundError,
    ProviderError,
    ProviderUnavailableError,
    ServiceUnavailableError,
    TokenvaultError,
    TransportError,
    UnauthorizedError,
    ValidationError,
)
from .token import AccessToken
from .webhook import SIGNATURE_HEADER, WebhookSignatureError, verify_webhook

__all__ = [
    "AccessToken",
    "AsyncProxyResponse",
    "AsyncTokenvault",
    "ConflictError",
    "ForbiddenError",
    "IntegrationMisconfiguredError",
    "NeedsReauthError",
    "NotConnectedError",
    "NotFoundError",
    "ProviderError",
    "ProviderUnavailableError",
    "ProxyResponse",
    "SIGNATURE_HEADER",
    "ServiceUnavailableError",
    "Tokenvault",
    "TokenvaultError",
    "TransportError",
    "UnauthorizedError",
    "ValidationError",
    "WebhookSignatureError",
    "__version__",
    "models",
    "verify_webhook",
]
