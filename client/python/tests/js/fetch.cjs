// Node's own fetch against the HTTP API: write, read, ETag, 304, an error, delete.
// Prints one JSON report for test_http.py.
"use strict";
const base = process.argv[2];
const results = `${base}/v1/blocks/memory/default/results`;

async function main() {
  const report = {};
  const put = await fetch(`${results}/node/one`, {
    method: "PUT",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ from: "node", n: [1, 2, 3] }),
  });
  report.put = put.status;
  const reference = await put.json();
  const get = await fetch(`${results}/node/one`);
  report.value = await get.json();
  report.etag_matches_reference = get.headers.get("etag") === `"${reference.sha256}"`;
  const again = await fetch(`${results}/node/one`, { headers: { "If-None-Match": get.headers.get("etag") } });
  report.not_modified = again.status;
  const missing = await fetch(`${results}/node/missing`);
  report.missing = { status: missing.status, code: (await missing.json()).error.code };
  const del = await fetch(`${results}/node/one`, { method: "DELETE" });
  report.deleted = del.status;
  process.stdout.write(JSON.stringify(report));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
