"""The Python SDK against a live tokenvault and the OIDC test peer, run by
scripts/sdks.sh (which starts both and sets the environment below). Not part
of the unit tests: without the environment it fails, never skips.

One connection's whole life, once with each client: a connect session, the
browser flow driven over HTTP, a token, a forced refresh, the proxy (GET and
POST), the listing, the history, a delivered webhook verified, a bulk action
followed to the end, revocation; then needs_reauth after the peer revokes a
grant, as a typed error.
"""

import asyncio
import json
import os
import time
import unittest
from pathlib import Path
from typing import Any, Dict, List

import httpx

from tokenvault import (
    AsyncTokenvault,
    NeedsReauthError,
    NotConnectedError,
    Tokenvault,
    WebhookSignatureError,
    verify_webhook,
)

BASE = os.environ["TOKENVAULT_URL"]
API_KEY = os.environ["TOKENVAULT_API_KEY"]
PEER = os.environ["PEER_ISSUER"]
WEBHOOK_SECRET = os.environ["WEBHOOK_SECRET"]
WEBHOOK_DIR = Path(os.environ["WEBHOOK_DIR"])
INTEGRATION = "peer"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def peer_hook(name: str, body: Dict[str, Any]) -> Any:
    response = httpx.post(f"{PEER}/__test/{name}", json=body)
    response.raise_for_status()
    return response.json()


def sign_in_as(account: str) -> None:
    """The peer's automatic login signs in this account from now on."""
    peer_hook("config", {"account": account})


def browse(connect_url: str) -> httpx.Response:
    """What a browser does with a connect URL: follows every redirect
    (tokenvault → the peer's login and consent → tokenvault's callback),
    keeping cookies."""
    with httpx.Client(follow_redirects=True, headers={"accept": "text/html"}) as browser:
        return browser.get(connect_url)


def webhook_for(kind: str, user_id: str, timeout: float = 30.0) -> Dict[str, Any]:
    """The first delivered webhook of this kind for this user."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(WEBHOOK_DIR.glob("*.json")):
            delivery: Dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            event = json.loads(delivery["body"])
            if event.get("type") == kind and event.get("data", {}).get("user_id") == user_id:
                return delivery
        time.sleep(0.1)
    raise AssertionError(f"no {kind} webhook for {user_id} within {timeout} s")


def check_webhook(test: unittest.TestCase, user_id: str) -> None:
    delivery = webhook_for("connection.created", user_id)
    signature = delivery["headers"]["tokenvault-signature"]
    verify_webhook(delivery["body"], signature, WEBHOOK_SECRET)
    with test.assertRaises(WebhookSignatureError) as tampered:
        verify_webhook(delivery["body"].replace(user_id, "someone-else"), signature, WEBHOOK_SECRET)
    test.assertEqual(tampered.exception.reason, "mismatch")
    with test.assertRaises(WebhookSignatureError) as replayed:
        verify_webhook(delivery["body"], signature, WEBHOOK_SECRET, now=int(time.time()) + 3600)
    test.assertEqual(replayed.exception.reason, "stale")


class SyncClient(unittest.TestCase):
    def test_a_connection_from_connect_to_revoke(self) -> None:
        user = "py-sync-fan"
        sign_in_as(user)
        with Tokenvault(BASE, API_KEY) as tv:
            session = tv.create_connect_session(user, INTEGRATION)
            self.assertTrue(session["connect_url"].startswith(BASE))
            page = browse(session["connect_url"])
            self.assertEqual(page.status_code, 200, page.text)

            token = tv.get_token(user, INTEGRATION)
            self.assertTrue(token.access_token)
            self.assertNotIn(token.access_token, repr(token))
            self.assertIn("openid", token.scopes)

            refreshed = tv.refresh_connection(user, INTEGRATION)
            self.assertEqual(refreshed["status"], "connected")
            self.assertNotEqual(tv.get_token(user, INTEGRATION).access_token, token.access_token)

            with tv.proxy(user, INTEGRATION, "me") as me:
                self.assertEqual(me.status, 200)
                self.assertEqual(me.json()["sub"], user)
            # userinfo by POST (OpenID Connect Core 5.3.1): a form body.
            posted = tv.proxy(user, INTEGRATION, "me", method="POST", body="from=tokenvault-sdk", headers=FORM)
            self.assertEqual(posted.status, 200, posted.text())
            self.assertEqual(posted.json()["sub"], user)
            # The provider's own refusal is relayed, not raised.
            self.assertEqual(tv.proxy(user, INTEGRATION, "no-such-endpoint").status, 404)

            listed = list(tv.list_connections(integration=INTEGRATION, user_id_prefix="py-sync-", page_size=1))
            self.assertEqual([(c["user_id"], c["status"]) for c in listed], [(user, "connected")])
            kinds = [event["kind"] for event in tv.connection_events(user, INTEGRATION, page_size=1)]
            self.assertEqual(kinds, ["refresh_forced", "created"])

            check_webhook(self, user)

            action = tv.create_bulk_action(
                {"integration": INTEGRATION, "users": [user, "py-sync-nobody"], "request": {"method": "GET", "path": "me"}}
            )
            progress = list(tv.bulk_action_progress(action["id"], interval=0.2))
            final = progress[-1]
            self.assertEqual(final["state"], "completed")
            self.assertEqual(final["counts"]["succeeded"], 1)
            self.assertEqual(final["counts"]["skipped"], 1)
            skipped = list(tv.bulk_action_items(action["id"], state="skipped"))
            self.assertEqual([item["user_id"] for item in skipped], ["py-sync-nobody"])

            revocation = tv.revoke_connection(user, INTEGRATION)
            self.assertTrue(revocation["revoked_at_provider"])
            with self.assertRaises(NotConnectedError) as gone:
                tv.get_token(user, INTEGRATION)
            self.assertTrue(gone.exception.request_id)

    def test_needs_reauth_after_the_provider_revokes_the_grant(self) -> None:
        user = "py-sync-revoked"
        sign_in_as(user)
        with Tokenvault(BASE, API_KEY) as tv:
            self.assertEqual(browse(tv.create_connect_session(user, INTEGRATION)["connect_url"]).status_code, 200)
            peer_hook("revoke-grants", {"account": user})
            with self.assertRaises(NeedsReauthError) as refused:
                tv.refresh_connection(user, INTEGRATION)
            self.assertEqual(refused.exception.code, "needs_reauth")
            with self.assertRaises(NeedsReauthError):
                tv.get_token(user, INTEGRATION)
            self.assertEqual(tv.get_connection(user, INTEGRATION)["status"], "needs_reauth")


class AsyncClient(unittest.IsolatedAsyncioTestCase):
    async def test_a_connection_from_connect_to_revoke(self) -> None:
        user = "py-async-fan"
        await asyncio.to_thread(sign_in_as, user)
        async with AsyncTokenvault(BASE, API_KEY) as tv:
            session = await tv.create_connect_session(user, INTEGRATION, scopes="openid offline_access")
            page = await asyncio.to_thread(browse, session["connect_url"])
            self.assertEqual(page.status_code, 200, page.text)

            tokens = await asyncio.gather(*(tv.get_token(user, INTEGRATION) for _ in range(10)))
            self.assertEqual(len({t.access_token for t in tokens}), 1)
            self.assertEqual(set(tokens[0].scopes), {"openid", "offline_access"})
            await tv.refresh_connection(user, INTEGRATION)

            async with await tv.proxy(user, INTEGRATION, "me") as me:
                body = b"".join([chunk async for chunk in me.aiter_bytes()])
                self.assertEqual(json.loads(body)["sub"], user)
            posted = await tv.proxy(user, INTEGRATION, "me", method="POST", body="from=tokenvault-sdk", headers=FORM)
            self.assertEqual((await posted.json())["sub"], user)

            listed: List[str] = [c["user_id"] async for c in tv.list_connections(user_id_prefix="py-async-")]
            self.assertEqual(listed, [user])
            kinds = [event["kind"] async for event in tv.connection_events(user, INTEGRATION)]
            self.assertEqual(kinds, ["refresh_forced", "created"])
            await asyncio.to_thread(check_webhook, self, user)

            action = await tv.create_bulk_action(
                {"integration": INTEGRATION, "users": {"status": "connected"}, "request": {"method": "GET", "path": "me"}}
            )
            states = [a["state"] async for a in tv.bulk_action_progress(action["id"], interval=0.2)]
            self.assertEqual(states[-1], "completed")
            self.assertEqual([i async for i in tv.bulk_action_items(action["id"], state="failed")], [])

            await tv.revoke_connection(user, INTEGRATION)
            with self.assertRaises(NotConnectedError):
                await tv.get_token(user, INTEGRATION)

    async def test_needs_reauth_after_the_provider_revokes_the_grant(self) -> None:
        user = "py-async-revoked"
        await asyncio.to_thread(sign_in_as, user)
        async with AsyncTokenvault(BASE, API_KEY) as tv:
            session = await tv.create_connect_session(user, INTEGRATION)
            self.assertEqual((await asyncio.to_thread(browse, session["connect_url"])).status_code, 200)
            await asyncio.to_thread(peer_hook, "revoke-grants", {"account": user})
            with self.assertRaises(NeedsReauthError):
                await tv.refresh_connection(user, INTEGRATION)
            with self.assertRaises(NeedsReauthError):
                await tv.get_token(user, INTEGRATION)


if __name__ == "__main__":
    unittest.main(verbosity=2)
