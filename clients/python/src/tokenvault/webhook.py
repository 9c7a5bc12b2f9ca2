"""Webhook signatures.

``Tokenvault-Signature: t=<unix seconds>,v1=<hex>`` where hex is
HMAC-SHA256(secret, ``"<t>.<raw body>"``). Several ``v1`` may be listed while
a secret is being rotated; any one matching is enough.
"""

import hashlib
import hmac
import re
import time
from typing import List, Literal, Optional, Union

__all__ = ["SIGNATURE_HEADER", "WebhookSignatureError", "verify_webhook"]

#: The name of the header that carries the signature.
SIGNATURE_HEADER = "Tokenvault-Signature"

SignatureFailure = Literal["malformed", "stale", "mismatch"]

_REASONS = {
    "malformed": "the signature header is malformed (needs t=<unix seconds> and at least one v1=<hex>)",
    "stale": "the signature's timestamp is outside the tolerance (a replay, or a clock far off)",
    "mismatch": "no signature matches the body and secret",
}
_INTEGER = re.compile(r"^[+-]?\d+$")
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})*$")


class WebhookSignatureError(Exception):
    """The signature was refused; :attr:`reason` says why."""

    def __init__(self, reason: SignatureFailure) -> None:
        super().__init__(_REASONS[reason])
        self.reason: SignatureFailure = reason


def verify_webhook(
    raw_body: Union[bytes, str],
    signature_header: Optional[str],
    secret: str,
    *,
    tolerance_seconds: int = 300,
    now: Optional[int] = None,
) -> None:
    """Checks the signature header against the raw request body (the exact
    bytes received, before any JSON parsing). Returns when it is valid;
    raises :class:`WebhookSignatureError` saying why not. Comparison is
    constant-time."""
    timestamp: Optional[int] = None
    signatures: List[bytes] = []
    for raw in (signature_header or "").split(","):
        key, sep, value = raw.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            timestamp = int(value) if _INTEGER.match(value) else None
        elif key == "v1":
            if not _HEX.match(value):
                raise WebhookSignatureError("malformed")
            signatures.append(bytes.fromhex(value))
    if timestamp is None or not signatures:
        raise WebhookSignatureError("malformed")
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookSignatureError("stale")
    body = raw_body.encode("utf-8") if isinstance(raw_body, str) else raw_body
    expected = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).digest()
    # Every candidate is compared, so the time taken says nothing about which matched.
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(expected, signature)
    if not matched:
        raise WebhookSignatureError("mismatch")
