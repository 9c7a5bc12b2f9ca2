import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { verifyWebhook, WebhookSignatureError } from "../src/index.js";

interface Vector {
  name: string;
  secret: string;
  body: string;
  header: string;
  now: number;
  tolerance_seconds: number;
  expect: "ok" | "malformed" | "stale" | "mismatch";
}

// The vectors the Rust and Python suites check too.
const vectors = JSON.parse(
  readFileSync(new URL("../../../../tests/webhook/signature-vectors.json", import.meta.url), "utf8"),
) as { cases: Vector[] };

for (const vector of vectors.cases) {
  test(`webhook vector: ${vector.name}`, async () => {
    const verify = verifyWebhook(vector.body, vector.header, vector.secret, {
      now: vector.now,
      toleranceSeconds: vector.tolerance_seconds,
    });
    if (vector.expect === "ok") {
      await verify;
    } else {
      await assert.rejects(verify, (err: unknown) => {
        assert.ok(err instanceof WebhookSignatureError);
        assert.equal(err.reason, vector.expect);
        return true;
      });
    }
  });
}

test("a body given as bytes verifies like the same text", async () => {
  const vector = vectors.cases.find((v) => v.name === "non-ASCII body");
  assert.ok(vector);
  await verifyWebhook(new TextEncoder().encode(vector.body), vector.header, vector.secret, {
    now: vector.now,
  });
});
