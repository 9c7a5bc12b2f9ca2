"""A short life against a live tokenvault through the client that
openapi-python-client generated from its /openapi.json: a connect session,
a token read, the listing, the summary, the history, a proxy GET and POST.
Run by scripts/generated-clients.sh (type-checked with mypy --strict)."""

import io
import os
import sys

from tokenvault_client import AuthenticatedClient
from tokenvault_client.api.connections import (
    get_connection_summary,
    get_token,
    list_connection_events,
    list_connections,
)
from tokenvault_client.api.flows import create_connect_session
from tokenvault_client.api.proxy import proxy_get, proxy_post
from tokenvault_client.models import (
    AccessTokenBody,
    ConnectionEventPage,
    ConnectionPage,
    ConnectionSummary,
    ConnectSessionCreated,
    ConnectSessionRequest,
    ErrorBody,
)
from tokenvault_client.types import File


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"check failed: {what}")


def main() -> None:
    base, key = os.environ["BASE"], os.environ["API_KEY"]
    client = AuthenticatedClient(base_url=base, token=key)

    session = create_connect_session.sync(
        client=client,
        body=ConnectSessionRequest(user_id="py-user", integration="demo"),
    )
    check(isinstance(session, ConnectSessionCreated), f"connect session: {session!r}")
    assert isinstance(session, ConnectSessionCreated)
    check(session.connect_url.startswith(base), "connect_url on the public URL")

    token = get_token.sync(user_id="alice", integration="demo", client=client, min_ttl=60)
    check(isinstance(token, AccessTokenBody), f"token: {token!r}")
    assert isinstance(token, AccessTokenBody)
    check(len(token.access_token) > 0, "an access token")

    missing = get_token.sync(user_id="nobody", integration="demo", client=client)
    check(isinstance(missing, ErrorBody), f"no connection: {missing!r}")
    assert isinstance(missing, ErrorBody)
    check(missing.error == "connection_not_found", "typed error body")

    page = list_connections.sync(client=client, integration="demo", limit=10)
    check(isinstance(page, ConnectionPage), f"listing: {page!r}")
    assert isinstance(page, ConnectionPage)
    check(any(c.user_id == "alice" for c in page.connections), "alice is listed")

    summary = get_connection_summary.sync(client=client)
    check(isinstance(summary, ConnectionSummary), f"summary: {summary!r}")
    assert isinstance(summary, ConnectionSummary)
    check(summary.by_status.connected >= 1, "the summary counts alice")

    history = list_connection_events.sync(user_id="alice", integration="demo", client=client)
    check(isinstance(history, ConnectionEventPage), f"history: {history!r}")
    assert isinstance(history, ConnectionEventPage)
    check(history.events[-1].kind.value == "created", "alice's history starts with created")

    got = proxy_get.sync_detailed(integration="demo", user_id="alice", path="echo", client=client)
    check(got.status_code == 200, f"proxy GET: {got.status_code}")
    check(b'"GET"' in got.content, "the provider answered the GET")
    posted = proxy_post.sync_detailed(
        integration="demo",
        user_id="alice",
        path="echo",
        client=client,
        body=File(payload=io.BytesIO(b'{"hello": "world"}'), mime_type="application/json"),
    )
    check(posted.status_code == 200, f"proxy POST: {posted.status_code}")
    check(b"world" in posted.content, "the provider saw the body")
    print("python client: ok")


main()
