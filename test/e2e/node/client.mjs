// Fetches credentials with the AWS SDK for JavaScript v3, as an unmodified
// Node.js application does, for the end-to-end matrix. Argument 1 picks the
// provider: "chain" (fromNodeProviderChain, what SDK clients use by
// default) or "container" (fromContainerMetadata). One JSON line per fetch;
// with a second argument 2 it waits for a line on stdin between the two
// fetches (the test rotates the token meanwhile). The chain refreshes on its
// own once the credentials are inside its 5-minute window, in the background
// (its "passive" refresh): the call that notices returns the cached
// credentials and the calls after the refresh get the new ones, so the
// second fetch asks again, as an application's next request would, until
// they change (at most 3 s).
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fromContainerMetadata, fromNodeProviderChain } from "@aws-sdk/credential-providers";

const [which, n] = process.argv.slice(2);
if (which === "version") {
  const pkg = JSON.parse(readFileSync(new URL("./node_modules/@aws-sdk/credential-providers/package.json", import.meta.url)));
  console.log(pkg.version);
  process.exit(0);
}
const provider = which === "container" ? fromContainerMetadata({ timeout: 1000, maxRetries: 0 }) : fromNodeProviderChain();
const fetches = n === "2" ? 2 : 1;
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const emit = (o) => console.log(JSON.stringify(o));
let first;
try {
  for (let i = 0; i < fetches; i++) {
    if (i > 0) await lines.next();
    let c = await provider();
    for (let k = 0; i > 0 && k < 30 && c.accessKeyId === first?.accessKeyId; k++) {
      await new Promise((r) => setTimeout(r, 100));
      c = await provider();
    }
    first ??= c;
    emit({
      ok: true, AccessKeyId: c.accessKeyId, SecretAccessKey: c.secretAccessKey, SessionToken: c.sessionToken,
      Expiration: c.expiration ? c.expiration.toISOString().replace(/\.\d{3}Z$/, "Z") : "",
    });
  }
  process.exit(0);
} catch (e) {
  emit({ ok: false, error: `${e.name}: ${e.message}` });
  process.exit(1);
}
