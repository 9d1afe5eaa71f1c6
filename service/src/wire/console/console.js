// The results console: a page over the HTTP API only (docs/http.md). The token a person
// enters lives in this variable, in this tab's memory: never in storage, cookies or URLs.
"use strict";

let token = "";
let block = "";
let pageToken = "";
let current = null; // the key shown

const $ = (id) => document.getElementById(id);

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.hidden = !text;
  m.className = isError ? "error" : "";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok && response.status !== 304) {
    let error = { code: String(response.status), message: response.statusText };
    try {
      error = (await response.json()).error || error;
    } catch (_) {
      // A reply without a JSON body (HEAD): the status says it.
    }
    const e = new Error(error.message);
    e.status = response.status;
    e.code = error.code;
    throw e;
  }
  return response;
}

function explain(e) {
  if (e.status === 401) {
    say("This server needs a token: enter one above (it is kept in this tab's memory only).", true);
  } else if (e.status === 403) {
    say("The token may not do this: " + e.message, true);
  } else {
    say((e.code ? e.code + ": " : "") + e.message, true);
  }
}

function item(list, text, onClick) {
  const li = document.createElement("li");
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", () => onClick(li));
  li.appendChild(b);
  list.appendChild(li);
  return li;
}

function select(list, li) {
  for (const other of list.children) other.classList.remove("selected");
  li.classList.add("selected");
}

function describe(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v === null || v === undefined ? "-" : String(v);
    dl.append(dt, dd);
  }
}

function path(key) {
  const [kind, name] = block.split("/");
  const k = key.split("/").map(encodeURIComponent).join("/");
  return `/v1/blocks/${encodeURIComponent(kind)}/${encodeURIComponent(name)}/results/${k}`;
}

async function loadBlocks() {
  const list = $("blocks");
  list.replaceChildren();
  try {
    const { blocks } = await (await api("/v1/blocks")).json();
    for (const b of blocks) {
      const li = item(list, b.slug + (b.is_default ? " (default)" : ""), (li) => {
        select(list, li);
        openBlock(b.slug);
      });
      li.dataset.slug = b.slug;
    }
    if (!blocks.length) say("No block is visible to this token.", true);
    else say("");
  } catch (e) {
    explain(e);
  }
}

async function loadStats() {
  try {
    const { cache } = await (await api("/v1/stats")).json();
    describe($("cache"), [
      ["hits", cache.hits],
      ["misses", cache.misses],
      ["bytes", cache.bytes],
      ["entries", cache.entries],
      ["capacity", cache.capacity],
      ["evictions", cache.evictions],
    ]);
  } catch (e) {
    explain(e);
  }
}

function openBlock(slug) {
  block = slug;
  $("block-name").textContent = slug;
  $("result-panel").hidden = true;
  browse(true);
}

async function browse(fromStart) {
  if (!block) return;
  if (fromStart) {
    pageToken = "";
    $("keys").replaceChildren();
  }
  const [kind, name] = block.split("/");
  const q = new URLSearchParams({ prefix: $("prefix").value, page_size: "50" });
  if (pageToken) q.set("page_token", pageToken);
  try {
    const page = await (await api(`/v1/blocks/${kind}/${name}/results?${q}`)).json();
    const list = $("keys");
    for (const entry of page.entries) {
      const li = item(list, entry.key, (li) => {
        select(list, li);
        show(entry.key);
      });
      li.dataset.key = entry.key;
    }
    if (!page.entries.length && fromStart) say("No results under this prefix.");
    pageToken = page.next_page_token || "";
    $("next-page").hidden = !pageToken;
  } catch (e) {
    explain(e);
  }
}

function hex(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const row = Array.from(bytes.slice(i, i + 16), (b) => b.toString(16).padStart(2, "0")).join(" ");
    lines.push(i.toString(16).padStart(6, "0") + "  " + row);
  }
  return lines.join("\n");
}

async function show(key) {
  current = key;
  $("result-panel").hidden = false;
  $("result-key").textContent = key;
  $("value").textContent = "…";
  try {
    const response = await api(path(key) + "?want=json");
    const reference = JSON.parse(response.headers.get("resultstore-reference") || "{}");
    showReference(reference);
    const text = await response.text();
    try {
      $("value").textContent = JSON.stringify(JSON.parse(text), null, 2);
    } catch (_) {
      $("value").textContent = text;
    }
    say("");
    loadStats();
  } catch (e) {
    if (e.code !== "FAILED_PRECONDITION") return explain(e);
    // Not plain data (a pickled object, say): its size and first bytes.
    try {
      const response = await api(path(key) + "?want=raw", { headers: { Range: "bytes=0-255" } });
      const reference = JSON.parse(response.headers.get("resultstore-reference") || "{}");
      showReference(reference);
      const bytes = new Uint8Array(await response.arrayBuffer());
      $("value").textContent =
        `(not shown as JSON: ${e.message})\n` +
        `${reference.size} bytes (${response.headers.get("resultstore-value-serializer") || "?"}); the first ${bytes.length}:\n\n` +
        hex(bytes);
      say("");
    } catch (e2) {
      explain(e2);
    }
  }
}

function showReference(r) {
  const serializer = r.serializer && typeof r.serializer === "object" ? r.serializer.type : r.serializer;
  describe($("reference"), [
    ["block", r.block],
    ["serializer", serializer],
    ["size", r.size],
    ["sha256", r.sha256],
    ["created", r.created],
    ["expiration", r.expiration],
    ["persisted", r.persisted],
    ["format", r.format],
    ["uri", r.uri],
  ]);
}

async function remove() {
  if (!current) return;
  try {
    await api(path(current), { method: "DELETE" });
    say(`Deleted ${current}.`);
    for (const li of $("keys").children) if (li.dataset.key === current) li.remove();
    $("result-panel").hidden = true;
    current = null;
    loadStats();
  } catch (e) {
    explain(e);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    loadBlocks();
    loadStats();
  });
  $("prefix-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    browse(true);
  });
  $("next-page").addEventListener("click", () => browse(false));
  $("refresh-stats").addEventListener("click", loadStats);
  $("delete").addEventListener("click", remove);
  loadBlocks();
  loadStats();
});
