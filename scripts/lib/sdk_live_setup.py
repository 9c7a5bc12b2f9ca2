"""Helpers of scripts/sdks.sh (standard library only).

    sdk_live_setup.py register-client ISSUER REDIRECT_URI
        registers the SDK suites' client (sdk-app) at the OIDC test peer;
    sdk_live_setup.py receive-webhooks DIRECTORY
        serves a webhook receiver on a free loopback port (printed first):
        each delivery becomes DIRECTORY/<n>.json with its headers and raw body.
"""

import http.server
import itertools
import json
import os
import sys
import urllib.request


def register_client(issuer: str, redirect_uri: str) -> None:
    client = {
        "client_id": "sdk-app",
        "client_secret": "sdk-secret",
        "redirect_uris": [redirect_uri],
        "grant_types": [
            "authorization_code",
            "refresh_token",
            # The browser suite's device page.
            "urn:ietf:params:oauth:grant-type:device_code",
        ],
    }
    request = urllib.request.Request(
        f"{issuer}/__test/clients",
        data=json.dumps(client).encode(),
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(request).read()


def receive_webhooks(directory: str) -> None:
    counter = itertools.count()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            name = os.path.join(directory, f"{next(counter):06d}.json")
            delivery = {
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8"),
            }
            # Written whole, then renamed: a reader never sees half a file.
            with open(name + ".tmp", "w", encoding="utf-8") as out:
                json.dump(delivery, out)
            os.rename(name + ".tmp", name)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "register-client":
        register_client(*args)
    elif command == "receive-webhooks":
        receive_webhooks(*args)
    else:
        sys.exit(f"unknown command {command}")
