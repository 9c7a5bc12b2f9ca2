"""A usable access token whose secret never prints."""

from datetime import datetime, timezone
from typing import Any, Optional, Sequence, Tuple

__all__ = ["AccessToken"]

_MASK = "********"


class AccessToken:
    """A valid access token for one user's connection.

    The secret is reachable only through :attr:`access_token` (and
    :meth:`authorization`): ``repr``, ``str``, f-strings, logging and
    pickling-free copies show it masked, so it cannot leak into a log line
    by accident.
    """

    __slots__ = ("_access_token", "token_type", "expires_at", "scopes")

    def __init__(
        self,
        access_token: str,
        token_type: str,
        expires_at: Optional[datetime],
        scopes: Sequence[str],
    ) -> None:
        self._access_token = access_token
        #: ``Bearer`` (or ``MAC``).
        self.token_type = token_type
        #: When it expires (UTC); ``None`` when the provider did not say.
        self.expires_at = expires_at
        #: The granted scopes.
        self.scopes: Tuple[str, ...] = tuple(scopes)

    @property
    def access_token(self) -> str:
        """The token in the clear, for the provider's API."""
        return self._access_token

    def authorization(self) -> str:
        """The ``Authorization`` header value for the provider's API."""
        return f"{self.token_type} {self._access_token}"

    def expires_in(self, now: Optional[datetime] = None) -> Optional[float]:
        """Seconds until it expires (negative once expired); ``None`` when unknown."""
        if self.expires_at is None:
            return None
        return (self.expires_at - (now or datetime.now(timezone.utc))).total_seconds()

    def __repr__(self) -> str:
        expires = self.expires_at.isoformat() if self.expires_at else "never"
        return f"AccessToken({_MASK}, token_type={self.token_type!r}, expires={expires})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __reduce__(self) -> Any:
        # A token is not meant to be serialized to a cache or a queue by accident.
        raise TypeError("AccessToken cannot be pickled: store the connection, not the token")

    # Immutable: a copy is the same token (and copying must not go through pickling).
    def __copy__(self) -> "AccessToken":
        return self

    def __deepcopy__(self, memo: Any) -> "AccessToken":
        return self


def parse_time(value: Optional[str]) -> Optional[datetime]:
    """An RFC 3339 time from the API (``…Z``, up to nanoseconds) as an aware
    datetime; Python 3.9's ``fromisoformat`` takes neither ``Z`` nor more than
    six fractional digits."""
    if value is None:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    head, sep, rest = text.partition(".")
    if sep:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)].ljust(6, '0')}{rest[digits:]}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
