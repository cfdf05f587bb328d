import assert from "node:assert/strict";
import { claimProcessTrust, resetProcessTrust } from "./exact_trust.ts";

const env = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("claimProcessTrust: only DENO_TLS_CA_STORE=system without DENO_CERT frees the store", () => {
  try {
    assert.equal(
      claimProcessTrust(env({ DENO_TLS_CA_STORE: "system" })),
      undefined,
    );
    assert.equal(
      claimProcessTrust(env({})),
      'DENO_TLS_CA_STORE is not set to "system"',
    );
    assert.equal(
      claimProcessTrust(env({ DENO_TLS_CA_STORE: "system,mozilla" })),
      'DENO_TLS_CA_STORE is "system,mozilla", not "system"',
    );
    assert.equal(
      claimProcessTrust(
        env({ DENO_TLS_CA_STORE: "system", DENO_CERT: "/x/ca.pem" }),
      ),
      'DENO_CERT "/x/ca.pem" adds a root to the process',
    );
  } finally {
    resetProcessTrust();
  }
});

Deno.test("exactCaFetch: without a claim, or with the CA given inline, it goes through node:https", async () => {
  const { exactCaFetch } = await import("./exact_trust.ts");
  const unclaimed = exactCaFetch({ ca: "pem", caFile: "/x/ca.pem" });
  assert.equal(unclaimed.transport, "node:https");
  unclaimed.close();
  claimProcessTrust(env({ DENO_TLS_CA_STORE: "system" }));
  try {
    const inline = exactCaFetch({ ca: "pem" });
    assert.equal(inline.transport, "node:https");
    inline.close();
  } finally {
    resetProcessTrust();
  }
});
