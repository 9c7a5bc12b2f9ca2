"""Every /v1 operation as a description of its request (method, path,
query, body) typed by what it answers. The sync and async clients send the
same descriptions, so each operation is spelled out once."""

from dataclasses import dataclass, field
from typing import Any, Dict, Generic, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union
from urllib.parse import quote

from . import models

T = TypeVar("T")

QueryValue = Union[str, int, float, bool, None]
Scopes = Union[List[str], str]

#: Marks "no body" apart from a JSON ``null``.
NO_BODY: Any = object()


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request; ``T`` is the JSON body a 2xx answer carries."""

    method: str
    path: str
    query: Mapping[str, QueryValue] = field(default_factory=dict)
    json: Any = NO_BODY
    content: Optional[bytes] = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The proxy: the provider's answer is relayed whatever its status.
    raw: bool = False


def path(*segments: str) -> str:
    """``/v1/…`` with each caller-supplied segment escaped (a user id may
    hold ``/``, ``?`` or spaces)."""
    return "/v1/" + "/".join(quote(segment, safe="") for segment in segments)


def connection(user_id: str, integration: str, *rest: str) -> str:
    return path("users", user_id, "connections", integration, *rest)


def without_none(values: Mapping[str, Any]) -> Dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


# ----- tokens -----------------------------------------------------------------


def get_token(user_id: str, integration: str, min_ttl: Optional[int]) -> "Call[models.AccessTokenBody]":
    return Call("GET", connection(user_id, integration, "token"), {"min_ttl": min_ttl})


def get_app_token(integration: str) -> "Call[models.AccessTokenBody]":
    return Call("GET", path("integrations", integration, "token"))


# ----- connecting -------------------------------------------------------------


def create_connect_session(
    user_id: str,
    integration: Union[str, Sequence[str]],
    scopes: Optional[Scopes],
    redirect_to: Optional[str],
    provider_params: Optional[Mapping[str, str]],
    confirm: Optional[bool],
    connect_ui: Optional[str],
    reconnect: Optional[bool],
    connection_params: Optional[Mapping[str, str]] = None,
) -> "Call[models.ConnectSessionCreated]":
    """Several integrations make a picker: the link's page lets the user choose."""
    which: Dict[str, Any] = (
        {"integration": integration} if isinstance(integration, str) else {"integrations": list(integration)}
    )
    body = without_none(
        {
            "user_id": user_id,
            **which,
            "connect_ui": connect_ui,
            "scopes": scopes,
            "redirect_to": redirect_to,
            "provider_params": dict(provider_params) if provider_params is not None else None,
            "connection_params": dict(connection_params) if connection_params is not None else None,
            "confirm": confirm,
            "reconnect": reconnect,
        }
    )
    return Call("POST", path("connect-sessions"), json=body)


def confirm_connect_session(
    session_id: str, confirm_code: str, user_id: str
) -> "Call[models.ConfirmedConnection]":
    body = {"confirm_code": confirm_code, "user_id": user_id}
    return Call("POST", path("connect-sessions", session_id, "confirm"), json=body)


def create_device_session(
    user_id: str, integration: str, scopes: Optional[Scopes]
) -> "Call[models.DeviceSessionCreated]":
    body = without_none({"user_id": user_id, "integration": integration, "scopes": scopes})
    return Call("POST", path("device-sessions"), json=body)


def get_device_session(session_id: str) -> "Call[models.DeviceSessionView]":
    return Call("GET", path("device-sessions", session_id))


# ----- connections ------------------------------------------------------------


def get_connection(user_id: str, integration: str) -> "Call[models.ConnectionView]":
    return Call("GET", connection(user_id, integration))


def list_user_connections(user_id: str) -> "Call[models.ConnectionList]":
    return Call("GET", path("users", user_id, "connections"))


def list_connections(
    status: Optional[str],
    integration: Optional[str],
    user_id_prefix: Optional[str],
    limit: Optional[int],
    after: Optional[str],
) -> "Call[models.ConnectionPage]":
    query = {
        "status": status,
        "integration": integration,
        "user_id_prefix": user_id_prefix,
        "limit": limit,
        "after": after,
    }
    return Call("GET", path("connections"), query)


def connections_of(page: models.ConnectionPage) -> Tuple[List[models.ListedConnection], Optional[str]]:
    return page["connections"], page.get("next_cursor")


def connection_summary() -> "Call[models.ConnectionSummary]":
    return Call("GET", path("connections", "summary"))


def connection_events(
    user_id: str, integration: str, limit: Optional[int], after: Optional[str]
) -> "Call[models.ConnectionEventPage]":
    return Call("GET", connection(user_id, integration, "events"), {"limit": limit, "after": after})


def events_of(page: models.ConnectionEventPage) -> Tuple[List[models.ConnectionEvent], Optional[str]]:
    return page["events"], page.get("next_cursor")


def refresh_connection(user_id: str, integration: str) -> "Call[models.RefreshedConnection]":
    return Call("POST", connection(user_id, integration, "refresh"), json={})


def revoke_connection(user_id: str, integration: str) -> "Call[models.Revocation]":
    return Call("DELETE", connection(user_id, integration))


def get_profile(user_id: str, integration: str) -> "Call[models.ProfileBody]":
    return Call("GET", connection(user_id, integration, "profile"))


def import_connection(
    user_id: str, integration: str, grant: models.ImportBody, force: Optional[bool]
) -> "Call[models.ImportedConnection]":
    return Call("PUT", connection(user_id, integration), {"force": force}, json=grant)


# ----- the provider's API -----------------------------------------------------


def proxy(
    user_id: str,
    integration: str,
    api_path: str,
    method: str,
    query: Optional[Mapping[str, QueryValue]],
    body: Any,
    headers: Optional[Mapping[str, str]],
) -> "Call[Any]":
    """``body``: bytes or a string are sent as they are, anything else as JSON."""
    target = path("proxy", integration, user_id) + "/" + api_path.lstrip("/")
    sent_headers = {name.lower(): value for name, value in (headers or {}).items()}
    if body is None or body is NO_BODY:
        return Call(method.upper(), target, query or {}, headers=sent_headers, raw=True)
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        content = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        return Call(method.upper(), target, query or {}, content=content, headers=sent_headers, raw=True)
    return Call(method.upper(), target, query or {}, json=body, headers=sent_headers, raw=True)


# ----- bulk actions -----------------------------------------------------------


def create_bulk_action(spec: models.BulkSpecInput) -> "Call[models.BulkActionView]":
    return Call("POST", path("bulk-actions"), json=spec)


def get_bulk_action(action_id: str) -> "Call[models.BulkActionView]":
    return Call("GET", path("bulk-actions", action_id))


def cancel_bulk_action(action_id: str) -> "Call[models.BulkActionView]":
    return Call("POST", path("bulk-actions", action_id, "cancel"), json={})


def is_finished(action: models.BulkActionView) -> bool:
    return action["state"] in ("completed", "cancelled")


def bulk_action_items(
    action_id: str, state: Optional[str], limit: Optional[int], after: Optional[int]
) -> "Call[models.ItemPage]":
    query = {"state": state, "limit": limit, "after": after}
    return Call("GET", path("bulk-actions", action_id, "items"), query)


def items_of(page: models.ItemPage) -> Tuple[List[models.ItemBody], Optional[int]]:
    return page["items"], page.get("next_after")


# ----- integrations -----------------------------------------------------------


def list_integrations() -> "Call[models.IntegrationList]":
    return Call("GET", path("integrations"))


def list_providers() -> "Call[models.ProviderList]":
    return Call("GET", path("providers"))


def get_provider(key: str) -> "Call[models.ProviderDetail]":
    return Call("GET", path("providers", key))


def reset_integration(integration: str) -> "Call[models.IntegrationReset]":
    return Call("POST", path("integrations", integration, "reset"), json={})


def ping() -> "Call[models.Pong]":
    return Call("GET", path("ping"))
