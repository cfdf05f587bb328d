import assert from "node:assert/strict";
import {
  commandArgv,
  expand,
  referencedNames,
  splitFields,
} from "./command.ts";

const vars: Record<string, string> = {
  SUBNET: "10.244.1.0/24",
  PUBLIC_IP: "198.18.0.2",
  "1": "one",
};
const lookup = (n: string) => vars[n] ?? "";

Deno.test("splitFields() splits on Go's white space, not on U+FEFF", () => {
  assert.deepEqual(splitFields("  a\tb\u0085c\u00a0d\n"), ["a", "b", "c", "d"]);
  assert.deepEqual(splitFields("a\ufeffb"), ["a\ufeffb"]);
  assert.deepEqual(splitFields(" \t "), []);
});

Deno.test("expand() follows Go's os.Expand", () => {
  assert.equal(expand("$SUBNET", lookup), "10.244.1.0/24");
  assert.equal(expand("${PUBLIC_IP}:8080", lookup), "198.18.0.2:8080");
  assert.equal(expand("x$SUBNET.y", lookup), "x10.244.1.0/24.y");
  // A one-character special name, then literal text.
  assert.equal(expand("$1x ${1}", lookup), "onex one");
  // `$` before a non-name stays; a trailing `$` stays.
  assert.equal(expand("a$/b$", lookup), "a$/b$");
  // Bad syntax is eaten: `${}` and an unclosed `${`.
  assert.equal(expand("a${}b", lookup), "ab");
  assert.equal(expand("a${SUBNET", lookup), "aSUBNET");
  assert.equal(expand("$UNSET-", lookup), "-");
  assert.equal(expand("$$", lookup), "");
});

Deno.test("commandArgv() splits before expanding: a value with spaces stays one argument", () => {
  assert.deepEqual(
    commandArgv(
      "/bin/add.sh $SUBNET  ${PUBLIC_IP}",
      (n) => n === "SUBNET" ? "a b" : lookup(n),
    ),
    ["/bin/add.sh", "a b", "198.18.0.2"],
  );
  assert.equal(commandArgv("  ", lookup), undefined);
});

Deno.test("referencedNames() lists each variable once, in order", () => {
  assert.deepEqual(
    referencedNames("$HOME/x ${SUBNET} $HOME $PUBLIC_IP-$$"),
    ["HOME", "SUBNET", "PUBLIC_IP", "$"],
  );
});
