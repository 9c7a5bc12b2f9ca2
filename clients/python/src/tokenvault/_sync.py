"""The synchronous client."""

import itertools
import time
from types import TracebackType
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

import httpx

from . import _core
from . import _operations as ops
from . import models
from .token import AccessToken

T = TypeVar("T")
Item = TypeVar("Item")
Cursor = TypeVar("Cursor")

__all__ = ["Tokenvault", "ProxyResponse"]


class ProxyResponse:
    """The provider's answer, relayed: status, headers, and the body as a
    stream. Use it as a context manager, or read it whole, so the connection
    is released."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status: int = response.status_code
        self.headers: httpx.Headers = response.headers
        #: Whether tokenvault refreshed the token to make this call.
        self.refreshed: bool = response.headers.get("x-tokenvault-refreshed") == "true"

    def iter_bytes(self, chunk_size: Optional[int] = None) -> Iterator[bytes]:
        """The body as it arrives."""
        try:
            yield from self._response.iter_bytes(chunk_size)
        finally:
            self._response.close()

    def read(self) -> bytes:
        try:
            return self._response.read()
        finally:
            self._response.close()

    def text(self) -> str:
        self.read()
        return self._response.text

    def json(self) -> Any:
        self.read()
        return self._response.json()

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> "ProxyResponse":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProxyResponse(status={self.status})"


class Tokenvault:
    """A client of tokenvault's ``/v1`` API::

        with Tokenvault("http://127.0.0.1:8080", api_key) as tv:
            token = tv.get_token("fan-1", "spotify")

    ``timeout`` is per request, in seconds. A ``503`` that tokenvault answers
    with ``Retry-After`` is retried after waiting, up to ``max_retries``
    times (0 turns it off) and only when the wait is at most
    ``max_retry_wait`` seconds; otherwise the error is raised.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_retry_wait: float = 10.0,
        user_agent: Optional[str] = None,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        self._settings = _core.Settings(base_url, api_key, timeout, max_retries, max_retry_wait, user_agent)
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, transport=transport)
        self._sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Tokenvault":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tokenvault({self._settings!r})"

    # ----- tokens --------------------------------------------------------------

    def get_token(self, user_id: str, integration: str, *, min_ttl: Optional[int] = None) -> AccessToken:
        """A valid access token for the user's connection, refreshed first
        when it would expire within ``min_ttl`` seconds (default 60).

        Raises NotConnectedError, NeedsReauthError, ProviderUnavailableError, …"""
        return _core.access_token(self._json(ops.get_token(user_id, integration, min_ttl)))

    def get_app_token(self, integration: str) -> AccessToken:
        """An app-level (client credentials) token of an integration."""
        return _core.access_token(self._json(ops.get_app_token(integration)))

    # ----- connecting ----------------------------------------------------------

    def create_connect_session(
        self,
        user_id: str,
        integration: Union[str, Sequence[str]],
        *,
        scopes: Optional[ops.Scopes] = None,
        redirect_to: Optional[str] = None,
        provider_params: Optional[Mapping[str, str]] = None,
        confirm: Optional[bool] = None,
        connect_ui: Optional[models.ConnectUi] = None,
        reconnect: Optional[bool] = None,
        connection_params: Optional[Mapping[str, str]] = None,
    ) -> models.ConnectSessionCreated:
        """Starts a connect session: send the user's browser to its ``connect_url``.

        Several integrations make a picker: the link's page lets the user
        choose. ``connect_ui="page"`` shows the Connect UI page (the app, the
        integration, the access asked for) first; ``"direct"`` goes straight
        to the provider; default: the service's ``connect_ui`` setting.
        ``reconnect=True`` renews the user's existing connection (after
        ``needs_reauth``): same connection id; ``NotConnectedError`` when there is none.
        ``connection_params`` gives the provider's connection parameters that
        come from the app (``source == "session"`` in ``get_provider``), e.g.
        ``{"shop": "acme"}`` for Shopify."""
        call = ops.create_connect_session(
            user_id,
            integration,
            scopes,
            redirect_to,
            provider_params,
            confirm,
            connect_ui,
            reconnect,
            connection_params,
        )
        return self._json(call)

    def confirm_connect_session(
        self, session_id: str, confirm_code: str, user_id: str
    ) -> models.ConfirmedConnection:
        """Confirm mode: attaches the flow's code to the user."""
        return self._json(ops.confirm_connect_session(session_id, confirm_code, user_id))

    def create_device_session(
        self, user_id: str, integration: str, *, scopes: Optional[ops.Scopes] = None
    ) -> models.DeviceSessionCreated:
        """Starts a device authorization session (RFC 8628)."""
        return self._json(ops.create_device_session(user_id, integration, scopes))

    def get_device_session(self, session_id: str) -> models.DeviceSessionView:
        return self._json(ops.get_device_session(session_id))

    # ----- connections ---------------------------------------------------------

    def get_connection(self, user_id: str, integration: str) -> models.ConnectionView:
        """One connection's status document (no token material)."""
        return self._json(ops.get_connection(user_id, integration))

    def list_user_connections(self, user_id: str) -> models.ConnectionList:
        """Every connection of one user."""
        return self._json(ops.list_user_connections(user_id))

    def list_connections(
        self,
        *,
        status: Optional[models.ConnectionStatus] = None,
        integration: Optional[str] = None,
        user_id_prefix: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> Iterator[models.ListedConnection]:
        """Connections across users, every page, in (user id, integration) order."""
        return self._pages(
            lambda after: ops.list_connections(status, integration, user_id_prefix, page_size, after),
            ops.connections_of,
        )

    def connection_summary(self) -> models.ConnectionSummary:
        """Counts by integration and status, failing and due within the hour."""
        return self._json(ops.connection_summary())

    def connection_events(
        self, user_id: str, integration: str, *, page_size: Optional[int] = None
    ) -> Iterator[models.ConnectionEvent]:
        """The connection's history, newest first, every page."""
        return self._pages(
            lambda after: ops.connection_events(user_id, integration, page_size, after),
            ops.events_of,
        )

    def refresh_connection(self, user_id: str, integration: str) -> models.RefreshedConnection:
        """Refreshes now (once across all instances)."""
        return self._json(ops.refresh_connection(user_id, integration))

    def revoke_connection(self, user_id: str, integration: str) -> models.Revocation:
        """Revokes at the provider and erases the tokens."""
        return self._json(ops.revoke_connection(user_id, integration))

    def get_profile(self, user_id: str, integration: str) -> models.ProfileBody:
        """The user's profile at the provider (id, email, display name)."""
        return self._json(ops.get_profile(user_id, integration))

    def import_connection(
        self, user_id: str, integration: str, grant: models.ImportBody, *, force: Optional[bool] = None
    ) -> models.ImportedConnection:
        """Imports a grant from another system (admin scope)."""
        return self._json(ops.import_connection(user_id, integration, grant, force))

    # ----- the provider's API --------------------------------------------------

    def proxy(
        self,
        user_id: str,
        integration: str,
        path: str,
        *,
        method: str = "GET",
        query: Optional[Mapping[str, ops.QueryValue]] = None,
        body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> ProxyResponse:
        """Calls the provider's API as the user; tokenvault adds a valid token.

        The provider's status, headers and body come back as they are (a
        provider 404 is not an error here); tokenvault's own refusals raise.
        ``body``: bytes or a string are sent as they are, anything else as JSON."""
        call = ops.proxy(user_id, integration, path, method, query, body, headers)
        return ProxyResponse(self._send(call))

    # ----- bulk actions --------------------------------------------------------

    def create_bulk_action(self, spec: models.BulkSpecInput) -> models.BulkActionView:
        """Creates a bulk action (one provider request per user); it runs in the background."""
        return self._json(ops.create_bulk_action(spec))

    def get_bulk_action(self, action_id: str) -> models.BulkActionView:
        return self._json(ops.get_bulk_action(action_id))

    def cancel_bulk_action(self, action_id: str) -> models.BulkActionView:
        return self._json(ops.cancel_bulk_action(action_id))

    def bulk_action_progress(self, action_id: str, *, interval: float = 1.0) -> Iterator[models.BulkActionView]:
        """The action's progress every ``interval`` seconds until it completes or is cancelled."""
        while True:
            action = self.get_bulk_action(action_id)
            yield action
            if ops.is_finished(action):
                return
            self._sleep(interval)

    def bulk_action_items(
        self,
        action_id: str,
        *,
        state: Optional[models.ItemState] = None,
        page_size: Optional[int] = None,
    ) -> Iterator[models.ItemBody]:
        """The action's items (e.g. ``state="failed"``), every page, in order."""
        return self._pages(lambda after: ops.bulk_action_items(action_id, state, page_size, after), ops.items_of)

    # ----- integrations --------------------------------------------------------

    def list_integrations(self) -> List[models.IntegrationView]:
        return self._json(ops.list_integrations())["integrations"]

    def list_providers(self) -> List[models.ProviderEntry]:
        return self._json(ops.list_providers())["providers"]

    def get_provider(self, key: str) -> models.ProviderDetail:
        """One catalog entry in full (``NotFoundError`` with code ``unknown_provider`` when there is none)."""
        return self._json(ops.get_provider(key))

    def reset_integration(self, integration: str) -> models.IntegrationReset:
        return self._json(ops.reset_integration(integration))

    def ping(self) -> models.Pong:
        """Checks the API key."""
        return self._json(ops.ping())

    # ----- transport -----------------------------------------------------------

    def _pages(
        self,
        page: "Callable[[Optional[Cursor]], ops.Call[T]]",
        split: Callable[[T], Tuple[List[Item], Optional[Cursor]]],
    ) -> Iterator[Item]:
        after: Optional[Cursor] = None
        while True:
            items, after = split(self._json(page(after)))
            yield from items
            if after is None:
                return

    def _json(self, call: "ops.Call[T]") -> T:
        response = self._send(call)
        result: T = _core.parse_json(response)
        return result

    def _send(self, call: "ops.Call[Any]") -> httpx.Response:
        """Sends with the key, a timeout and bounded 503 retries; non-2xx
        answers of tokenvault's raise."""
        for attempt in itertools.count():
            request = self._settings.build(self._http, call)
            try:
                response = self._http.send(request, stream=call.raw)
            except httpx.HTTPError as err:
                raise _core.transport_error(call, err, self._settings.timeout) from err
            delay = self._settings.retry_delay(response, call, attempt)
            if delay is not None:
                response.close()
                self._sleep(delay)
                continue
            if response.is_success or not _core.is_ours(response, call):
                return response
            response.read()
            response.close()
            raise _core.error_from(response)
        raise AssertionError("unreachable")
