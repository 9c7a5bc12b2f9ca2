"""verify_webhook against the vectors the Rust and TypeScript suites check too."""

import json
import unittest
from pathlib import Path
from typing import Any, Dict, List

from tokenvault import WebhookSignatureError, verify_webhook

VECTORS = Path(__file__).resolve().parents[3] / "tests" / "webhook" / "signature-vectors.json"


def cases() -> List[Dict[str, Any]]:
    cases: List[Dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]
    return cases


class SharedVectors(unittest.TestCase):
    def test_every_vector_verifies_as_documented(self) -> None:
        all_cases = cases()
        self.assertGreaterEqual(len(all_cases), 10)
        for vector in all_cases:
            with self.subTest(vector["name"]):
                def verify() -> None:
                    verify_webhook(
                        vector["body"],
                        vector["header"],
                        vector["secret"],
                        now=vector["now"],
                        tolerance_seconds=vector["tolerance_seconds"],
                    )

                if vector["expect"] == "ok":
                    verify()
                else:
                    with self.assertRaises(WebhookSignatureError) as caught:
                        verify()
                    self.assertEqual(caught.exception.reason, vector["expect"])

    def test_a_body_given_as_bytes_verifies_like_the_same_text(self) -> None:
        vector = next(v for v in cases() if v["name"] == "non-ASCII body")
        verify_webhook(vector["body"].encode("utf-8"), vector["header"], vector["secret"], now=vector["now"])

    def test_the_default_clock_refuses_an_old_signature(self) -> None:
        vector = next(v for v in cases() if v["expect"] == "ok")
        with self.assertRaises(WebhookSignatureError) as caught:
            verify_webhook(vector["body"], vector["header"], vector["secret"])
        self.assertEqual(caught.exception.reason, "stale")


if __name__ == "__main__":
    unittest.main()
