"""The clients against scripted answers (httpx.MockTransport): what they
send, how they read answers, errors, retries, paging, the proxy, masking."""

import asyncio
import copy
import json
import logging
import pickle
import re
import unittest
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Dict, List, Optional

import httpx

import tokenvault
from tokenvault import (
    AccessToken,
    AsyncTokenvault,
    NeedsReauthError,
    NotConnectedError,
    ProviderUnavailableError,
    Tokenvault,
    TransportError,
    ValidationError,
    models,
)

Answer = Callable[[httpx.Request], httpx.Response]


def json_answer(status: int, body: Any, headers: Optional[Dict[str, str]] = None) -> Answer:
    return lambda request: httpx.Response(status, json=body, headers=headers or {})


def envelope(code: str) -> Dict[str, str]:
    return {"error": code, "message": f"{code} happened", "request_id": "req-1"}


def refusal(status: int, code: str, headers: Optional[Dict[str, str]] = None) -> Answer:
    """tokenvault's own error answer: the envelope and the header that marks it."""
    return json_answer(status, envelope(code), {"tokenvault-error": code, **(headers or {})})


TOKEN = {
    "access_token": "AT-secret-value",
    "token_type": "Bearer",
    "expires_at": "2030-01-01T00:00:00.123456789Z",
    "scopes": ["read"],
}


class Script:
    """Answers requests in order and records them."""

    def __init__(self, answers: List[Answer]) -> None:
        self.answers = list(answers)
        self.requests: List[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"no answer left for {request.method} {request.url}")
        return self.answers.pop(0)(request)

    def client(self, **options: Any) -> Tokenvault:
        tv = Tokenvault("http://tv.test/", "tvk_key", transport=httpx.MockTransport(self), **options)
        tv._sleep = self.sleeps.append
        return tv

    def async_client(self, **options: Any) -> AsyncTokenvault:
        tv = AsyncTokenvault("http://tv.test/", "tvk_key", transport=httpx.MockTransport(self), **options)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        tv._sleep = sleep
        return tv

    @property
    def sleeps(self) -> List[float]:
        if not hasattr(self, "_sleeps"):
            self._sleeps: List[float] = []
        return self._sleeps


class Tokens(unittest.TestCase):
    def test_get_token_sends_the_key_and_returns_a_token_that_never_prints(self) -> None:
        script = Script([json_answer(200, TOKEN)])
        token = script.client().get_token("fan 1/x", "spotify", min_ttl=120)
        self.assertIsInstance(token, AccessToken)
        self.assertEqual(token.access_token, "AT-secret-value")
        self.assertEqual(token.authorization(), "Bearer AT-secret-value")
        self.assertEqual(token.expires_at, datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc))
        self.assertEqual(token.scopes, ("read",))
        with self.assertLogs("tokens", level="INFO") as logs:
            logging.getLogger("tokens").info("got %s %r", token, token)
            logging.getLogger("tokens").info(f"got {token} {token!r} {[token]} {token:>10}")
        printed = [repr(token), str(token), f"{token}", str({"t": token}), *logs.output]
        for text in printed:
            self.assertNotIn("AT-secret-value", text)
        with self.assertRaises(TypeError):
            pickle.dumps(token)
        self.assertIs(copy.deepcopy({"t": token})["t"], token)
        request = script.requests[0]
        self.assertEqual(str(request.url), "http://tv.test/v1/users/fan%201%2Fx/connections/spotify/token?min_ttl=120")
        self.assertEqual(request.headers["authorization"], "Bearer tvk_key")
        self.assertRegex(request.headers["user-agent"], r"^tokenvault-python/\d+\.\d+\.\d+")

    def test_the_api_key_never_prints(self) -> None:
        tv = Tokenvault("http://tv.test", "tvk_secret_key")
        self.assertNotIn("tvk_secret_key", repr(tv))
        self.assertNotIn("tvk_secret_key", str(vars(tv)))
        atv = AsyncTokenvault("http://tv.test", "tvk_secret_key")
        self.assertNotIn("tvk_secret_key", repr(atv))

    def test_a_token_without_expiry(self) -> None:
        script = Script([json_answer(200, {**TOKEN, "expires_at": None})])
        token = script.client().get_token("u", "i")
        self.assertIsNone(token.expires_at)
        self.assertIsNone(token.expires_in())
        self.assertIn("never", repr(token))


class Errors(unittest.TestCase):
    def test_errors_are_classes_by_code_with_the_request_id(self) -> None:
        cases = [
            (409, "needs_reauth", NeedsReauthError),
            (404, "connection_not_found", NotConnectedError),
            (400, "invalid_user_id", ValidationError),
            (404, "unknown_integration", tokenvault.NotFoundError),
            (503, "database_unavailable", tokenvault.ServiceUnavailableError),
        ]
        for status, code, cls in cases:
            with self.subTest(code):
                with self.assertRaises(cls) as caught:
                    Script([refusal(status, code)]).client(max_retries=0).get_token("u", "spotify")
                self.assertEqual(caught.exception.code, code)
                self.assertEqual(caught.exception.status, status)
                self.assertEqual(caught.exception.request_id, "req-1")
                self.assertIsInstance(caught.exception, tokenvault.TokenvaultError)

    def test_an_answer_that_is_not_json_still_raises_by_status(self) -> None:
        script = Script([lambda request: httpx.Response(502, text="<html>bad gateway</html>")])
        with self.assertRaises(tokenvault.ProviderError) as caught:
            script.client().ping()
        self.assertEqual(caught.exception.code, "http_502")

    def test_a_503_with_a_short_retry_after_is_retried_a_long_one_raised(self) -> None:
        unavailable = refusal(503, "provider_unavailable", {"retry-after": "2"})
        retried = Script([unavailable, json_answer(200, TOKEN)])
        self.assertEqual(retried.client().get_token("u", "i").access_token, "AT-secret-value")
        self.assertEqual(len(retried.requests), 2)
        self.assertEqual(retried.sleeps, [2.0])

        long = Script([refusal(503, "provider_unavailable", {"retry-after": "60"})])
        with self.assertRaises(ProviderUnavailableError) as caught:
            long.client().get_token("u", "i")
        self.assertEqual(caught.exception.retry_after, 60)
        self.assertEqual(len(long.requests), 1)

        bounded = Script([unavailable, unavailable, unavailable])
        with self.assertRaises(ProviderUnavailableError):
            bounded.client(max_retries=2).get_token("u", "i")
        self.assertEqual(len(bounded.requests), 3)

        off = Script([unavailable])
        with self.assertRaises(ProviderUnavailableError):
            off.client(max_retries=0).get_token("u", "i")
        self.assertEqual(len(off.requests), 1)

    def test_no_answer_is_a_transport_error(self) -> None:
        def time_out(request: httpx.Request) -> httpx.Response:
            raise httpx.ReadTimeout("timed out", request=request)

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("connection refused", request=request)

        for answer, code in [(time_out, "timeout"), (refuse, "connection_failed")]:
            with self.subTest(code):
                with self.assertRaises(TransportError) as caught:
                    Script([answer]).client(timeout=1.5).get_token("u", "i")
                self.assertEqual(caught.exception.code, code)
                self.assertEqual(caught.exception.status, 0)
                self.assertNotIn("tvk_key", str(caught.exception))

    def test_the_timeout_reaches_the_transport(self) -> None:
        seen: List[Any] = []

        def record(request: httpx.Request) -> httpx.Response:
            seen.append(request.extensions["timeout"])
            return httpx.Response(200, json={"ok": True, "scopes": []})

        Script([record]).client(timeout=1.5).ping()
        self.assertEqual(seen[0]["read"], 1.5)


class Listing(unittest.TestCase):
    def row(self, user: str) -> Dict[str, Any]:
        return {"user_id": user, "integration": "spotify", "status": "connected", "id": user}

    def test_listing_walks_every_page_with_the_cursor(self) -> None:
        script = Script(
            [
                json_answer(200, {"connections": [self.row("a"), self.row("b")], "next_cursor": "CUR"}),
                json_answer(200, {"connections": [self.row("c")], "next_cursor": None}),
            ]
        )
        users = [c["user_id"] for c in script.client().list_connections(status="needs_reauth", page_size=2)]
        self.assertEqual(users, ["a", "b", "c"])
        first, second = (request.url.params for request in script.requests)
        self.assertEqual(first.get("status"), "needs_reauth")
        self.assertEqual(first.get("limit"), "2")
        self.assertNotIn("after", first)
        self.assertEqual(second.get("after"), "CUR")

    def test_bulk_items_page_by_sequence_number(self) -> None:
        item = {"seq": 7, "user_id": "a", "state": "failed", "attempts": 1}
        script = Script(
            [
                json_answer(200, {"items": [item], "next_after": 7}),
                json_answer(200, {"items": [], "next_after": None}),
            ]
        )
        items = list(script.client().bulk_action_items("b-1", state="failed", page_size=1))
        self.assertEqual([i["seq"] for i in items], [7])
        self.assertEqual(script.requests[1].url.params.get("after"), "7")

    def test_progress_polls_until_the_action_is_done(self) -> None:
        def action(state: str) -> Answer:
            return json_answer(200, {"id": "b-1", "state": state, "counts": {}, "total": 2})

        script = Script([action("scheduled"), action("running"), action("completed")])
        states = [a["state"] for a in script.client().bulk_action_progress("b-1", interval=0.5)]
        self.assertEqual(states, ["scheduled", "running", "completed"])
        self.assertEqual(script.sleeps, [0.5, 0.5])


class Connecting(unittest.TestCase):
    def test_several_integrations_make_a_picker(self) -> None:
        created = {"id": "s", "connect_url": "http://tv.test/connect/s", "expires_at": "2030-01-01T00:00:00Z"}
        script = Script([json_answer(201, created), json_answer(201, created)])
        tv = script.client()
        tv.create_connect_session("u", ["spotify", "tidal"], connect_ui="page")
        self.assertEqual(
            json.loads(script.requests[0].content),
            {"user_id": "u", "integrations": ["spotify", "tidal"], "connect_ui": "page"},
        )
        tv.create_connect_session("u", "spotify", scopes="a b", reconnect=True)
        self.assertEqual(
            json.loads(script.requests[1].content),
            {"user_id": "u", "integration": "spotify", "scopes": "a b", "reconnect": True},
        )


class Proxy(unittest.TestCase):
    def test_the_provider_answers_are_relayed_and_only_ours_raise(self) -> None:
        provider_404 = json_answer(404, {"error": {"status": 404, "message": "Not found"}})
        script = Script(
            [
                provider_404,
                # A provider answering in the very shape of our envelope, and a
                # 503 of its own with a short Retry-After: relayed, not retried.
                json_answer(404, envelope("connection_not_found")),
                json_answer(503, envelope("provider_unavailable"), {"retry-after": "0"}),
                refusal(409, "needs_reauth"),
            ]
        )
        tv = script.client()
        with tv.proxy("u", "spotify", "/me/tracks", method="post", query={"ids": "1,2"}, body={"ids": ["1"]}) as relayed:
            self.assertEqual(relayed.status, 404)
            self.assertEqual(relayed.json(), {"error": {"status": 404, "message": "Not found"}})
        request = script.requests[0]
        self.assertEqual(request.method, "POST")
        self.assertEqual(str(request.url), "http://tv.test/v1/proxy/spotify/u/me/tracks?ids=1%2C2")
        self.assertEqual(json.loads(request.content), {"ids": ["1"]})
        self.assertEqual(request.headers["content-type"], "application/json")
        self.assertEqual(tv.proxy("u", "spotify", "me").status, 404)
        self.assertEqual(tv.proxy("u", "spotify", "me").status, 503)
        self.assertEqual(len(script.requests), 3, "the provider's 503 was not retried")
        with self.assertRaises(NeedsReauthError):
            tv.proxy("u", "spotify", "me")

    def test_bytes_and_text_bodies_are_sent_as_they_are_and_the_answer_streams(self) -> None:
        chunks = [b"first,", b"second"]
        script = Script(
            [
                lambda request: httpx.Response(200, content=iter(chunks), headers={"x-tokenvault-refreshed": "true"}),
                lambda request: httpx.Response(201, text="ok"),
            ]
        )
        tv = script.client()
        response = tv.proxy("u", "i", "upload", method="PUT", body=b"\x00\x01", headers={"Content-Type": "image/png"})
        self.assertTrue(response.refreshed)
        self.assertEqual(b"".join(response.iter_bytes()), b"first,second")
        self.assertEqual(script.requests[0].content, b"\x00\x01")
        self.assertEqual(script.requests[0].headers["content-type"], "image/png")
        self.assertEqual(tv.proxy("u", "i", "note", method="POST", body="plain").text(), "ok")
        self.assertEqual(script.requests[1].content, b"plain")


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class Async(unittest.IsolatedAsyncioTestCase):
    async def test_the_async_client_is_the_same_api(self) -> None:
        script = Script(
            [
                refusal(503, "provider_unavailable", {"retry-after": "1"}),
                json_answer(200, TOKEN),
                json_answer(200, {"connections": [{"user_id": "a"}], "next_cursor": "C"}),
                json_answer(200, {"connections": [{"user_id": "b"}], "next_cursor": None}),
                lambda request: httpx.Response(200, content=chunks(b"a", b"b")),
                refusal(404, "connection_not_found"),
            ]
        )
        async with script.async_client() as tv:
            token = await tv.get_token("u", "i")
            self.assertEqual(token.access_token, "AT-secret-value")
            self.assertEqual(script.sleeps, [1.0])
            users = [c["user_id"] async for c in tv.list_connections()]
            self.assertEqual(users, ["a", "b"])
            async with await tv.proxy("u", "i", "me") as response:
                self.assertEqual(b"".join([chunk async for chunk in response.aiter_bytes()]), b"ab")
            with self.assertRaises(NotConnectedError):
                await tv.get_connection("u", "i")

    async def test_concurrent_calls_share_one_client(self) -> None:
        script = Script([json_answer(200, TOKEN) for _ in range(20)])
        async with script.async_client() as tv:
            tokens = await asyncio.gather(*(tv.get_token(f"u{n}", "i") for n in range(20)))
        self.assertEqual(len(tokens), 20)
        self.assertEqual({r.url.path for r in script.requests}, {f"/v1/users/u{n}/connections/i/token" for n in range(20)})


def snake(operation_id: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


# Where a method's name reads better than the operation id.
RENAMED = {
    "getConnectionSummary": "connection_summary",
    "listConnectionEvents": "connection_events",
    "listBulkActionItems": "bulk_action_items",
}


class Completeness(unittest.TestCase):
    def test_every_operation_of_the_document_has_a_method_on_both_clients(self) -> None:
        self.assertGreater(len(models.OPERATION_IDS), 20)
        for operation_id in models.OPERATION_IDS:
            name = "proxy" if operation_id.startswith("proxy") else RENAMED.get(operation_id, snake(operation_id))
            with self.subTest(operation_id):
                self.assertTrue(callable(getattr(Tokenvault, name, None)), f"Tokenvault.{name}")
                self.assertTrue(callable(getattr(AsyncTokenvault, name, None)), f"AsyncTokenvault.{name}")


if __name__ == "__main__":
    unittest.main()
