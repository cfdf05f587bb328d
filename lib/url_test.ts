import assert from "node:assert/strict";
import { lowerScheme, urlScheme } from "./url.ts";

Deno.test("urlScheme() compares schemes case-insensitively", () => {
  assert.equal(urlScheme("HTTP://10.0.0.1:6443"), "http");
  assert.equal(urlScheme("HtTpS://api:6443/x"), "https");
  assert.equal(urlScheme(" https://a"), "https");
  assert.equal(urlScheme("10.0.0.1:6443"), "");
  assert.equal(urlScheme("/path"), "");
});

Deno.test("lowerScheme() lowers only the scheme", () => {
  assert.equal(
    lowerScheme("HTTPS://API.Example:6443/P"),
    "https://API.Example:6443/P",
  );
  assert.equal(lowerScheme("no-scheme"), "no-scheme");
});
