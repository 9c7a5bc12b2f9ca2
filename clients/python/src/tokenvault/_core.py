"""What the sync and async clients share: building a request, deciding on
a retry, turning an answer into a body or an error."""

import re
from typing import Any, Mapping, Optional, Union

import httpx

from . import _operations as ops
from . import models
from ._version import __version__
from .errors import TokenvaultError, TransportError, error_for
from .token import AccessToken, parse_time

#: Set by tokenvault on every error it answers itself; the proxy never relays
#: a provider's header by this name, so it tells our refusal from theirs.
ERROR_HEADER = "tokenvault-error"

_SECONDS = re.compile(r"^\d+$")


class Settings:
    """A client's configuration; the API key never prints."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float,
        max_retries: int,
        max_retry_wait: float,
        user_agent: Optional[str],
    ) -> None:
        if not base_url:
            raise ValueError("base_url is required")
        if not api_key:
            raise ValueError("api_key is required")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        agent = f"tokenvault-python/{__version__}"
        self.user_agent = f"{agent} {user_agent}" if user_agent else agent

    def headers(self, call: "ops.Call[Any]") -> Mapping[str, str]:
        return {
            **call.headers,
            "authorization": f"Bearer {self._api_key}",
            "user-agent": self.user_agent,
            "accept": "*/*" if call.raw else "application/json",
        }

    def build(self, http: Union[httpx.Client, httpx.AsyncClient], call: "ops.Call[Any]") -> httpx.Request:
        query = {name: _query_value(value) for name, value in call.query.items() if value is not None}
        return http.build_request(
            call.method,
            self.base_url + call.path,
            params=query,
            headers=self.headers(call),
            content=call.content,
            json=None if call.json is ops.NO_BODY else call.json,
        )

    def retry_delay(self, response: httpx.Response, call: "ops.Call[Any]", attempt: int) -> Optional[float]:
        """Seconds to wait before sending again, or None: only tokenvault's
        own 503 with a Retry-After short enough, a bounded number of times."""
        if response.status_code != 503 or not is_ours(response, call) or attempt >= self.max_retries:
            return None
        seconds = retry_after(response)
        if seconds is None or seconds > self.max_retry_wait:
            return None
        return float(seconds)

    def __repr__(self) -> str:
        return f"{self.base_url!r}"


def _query_value(value: "ops.QueryValue") -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def retry_after(response: httpx.Response) -> Optional[int]:
    header = response.headers.get("retry-after", "").strip()
    return int(header) if _SECONDS.match(header) else None


def is_ours(response: httpx.Response, call: "ops.Call[Any]") -> bool:
    return not call.raw or ERROR_HEADER in response.headers


def error_from(response: httpx.Response) -> TokenvaultError:
    """The error for a read non-2xx answer of tokenvault's."""
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_for(response.status_code, body, retry_after(response))


def transport_error(call: "ops.Call[Any]", err: Exception, timeout: float) -> TransportError:
    if isinstance(err, httpx.TimeoutException):
        message = f"{call.method} {call.path}: no answer within {timeout:g} s"
        return TransportError(message, status=0, code="timeout")
    return TransportError(f"{call.method} {call.path}: {err}", status=0, code="connection_failed")


def parse_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as err:
        raise TokenvaultError(
            f"the service answered {response.status_code} with a body that is not JSON",
            status=response.status_code,
            code="invalid_response",
        ) from err


def access_token(body: models.AccessTokenBody) -> AccessToken:
    return AccessToken(
        access_token=body["access_token"],
        token_type=body["token_type"],
        expires_at=parse_time(body.get("expires_at")),
        scopes=body["scopes"],
    )
