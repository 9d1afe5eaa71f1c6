#!/usr/bin/env bash
# The curl examples of docs/http.md against a server at $1, each checked: status code and
# body. Exits non-zero at the first surprise.
set -euo pipefail
URL="$1"
B="$URL/v1/blocks/local-file-system/default/results"
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() { # expect STATUS DESCRIPTION curl-args...
  local want="$1" what="$2"; shift 2
  local got
  got=$(curl -s -o /tmp/curl-body.$$ -w '%{http_code}' "$@")
  [ "$got" = "$want" ] || fail "$what: status $got, expected $want: $(cat /tmp/curl-body.$$)"
}
trap 'rm -f /tmp/curl-body.$$' EXIT

expect 200 "list blocks" "$URL/v1/blocks"
grep -q '"local-file-system/default"' /tmp/curl-body.$$ || fail "the default block is listed"
expect 200 "write JSON" -X PUT -H 'Content-Type: application/json' --data '{"rows": 3, "ok": true}' "$B/curl/report"
grep -q '"type":"reference"' /tmp/curl-body.$$ || fail "a write answers its reference"
expect 200 "read JSON" "$B/curl/report"
[ "$(cat /tmp/curl-body.$$)" = '{"rows": 3, "ok": true}' ] || fail "the value read is the value written"
etag=$(curl -s -D - -o /dev/null "$B/curl/report" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')
[ -n "$etag" ] || fail "a read has an ETag"
expect 304 "read again with If-None-Match" -H "If-None-Match: $etag" "$B/curl/report"
expect 206 "a range of the raw bytes" -H 'Range: bytes=0-5' "$B/curl/report?want=raw"
[ "$(cat /tmp/curl-body.$$)" = '{"rows' ] || fail "the range's bytes"
expect 200 "the object as stored" "$B/curl/report?want=stored"
grep -q '"metadata"' /tmp/curl-body.$$ || fail "a Prefect 3 record"
expect 200 "exists" -I "$B/curl/report"
expect 200 "list by prefix" "$B?prefix=curl/"
grep -q '"key":"curl/report"' /tmp/curl-body.$$ || fail "the key is listed"
ref=$(curl -s -X PUT -H 'Content-Type: application/json' --data '[1, 2]' "$B/curl/list")
expect 200 "resolve a reference document" -X POST -H 'Content-Type: application/json' --data "$ref" "$URL/v1/resolve"
[ "$(cat /tmp/curl-body.$$)" = '[1, 2]' ] || fail "the reference resolves to its value"
expect 404 "a missing result" "$B/curl/missing"
grep -q '"code":"NOT_FOUND"' /tmp/curl-body.$$ || fail "the error names its gRPC code"
expect 409 "create_only over a result" -X PUT -H 'Content-Type: application/json' --data '1' "$B/curl/report?mode=create_only"
expect 204 "delete" -X DELETE "$B/curl/report"
expect 404 "gone" "$B/curl/report"
expect 200 "delete a prefix" -X DELETE "$B?prefix=curl/"
grep -q '"deleted":1' /tmp/curl-body.$$ || fail "the prefix held one result"
expect 200 "the cache's figures" "$URL/v1/stats"
expect 200 "the OpenAPI document" "$URL/openapi.json"
expect 200 "the console" "$URL/console"
echo "all curl checks passed"
