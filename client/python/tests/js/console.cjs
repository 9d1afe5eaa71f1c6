// The results console in a real browser: Debian's chromium, driven by playwright-core.
// Usage: node console.cjs URL TOKEN KEY SCREENSHOT. Prints one JSON report for
// test_console.py: what a person sees at each step, and every error the page logged.
"use strict";
const path = require("path");
const { chromium } = require(path.join(process.env.RESULTSTORE_NODE_MODULES, "playwright-core"));

const [url, token, key, screenshot] = process.argv.slice(2);
const BLOCK = "local-file-system/default";

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.RESULTSTORE_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    // CI runs as root, where Chromium's sandbox cannot start.
    args: ["--no-sandbox"],
  });
  const report = { console_errors: [], page_errors: [] };
  try {
    const page = await browser.newPage();
    let collecting = false;
    page.on("pageerror", (e) => report.page_errors.push(String(e)));
    page.on("console", (m) => {
      if (collecting && m.type() === "error") report.console_errors.push(m.text());
    });

    // No token: a clear message, not a blank page.
    await page.goto(`${url}/console`);
    await page.waitForFunction(() => !document.getElementById("message").hidden);
    report.no_token_message = await page.textContent("#message");

    // From here on, nothing may go wrong on the page.
    collecting = true;
    await page.fill("#token", token);
    await page.click("#token-form button");
    const block = page.locator(`#blocks li[data-slug="${BLOCK}"] button`);
    await block.waitFor();
    await block.click();
    const prefix = key.includes("/") ? key.slice(0, key.lastIndexOf("/") + 1) : key;
    await page.fill("#prefix", prefix);
    await page.click("#prefix-form button");
    const entry = page.locator(`#keys li[data-key="${key}"] button`);
    await entry.waitFor();
    await entry.click();
    await page.waitForFunction(() => {
      const v = document.getElementById("value").textContent;
      return v && v !== "…";
    });
    report.value = JSON.parse(await page.textContent("#value"));
    const reference = {};
    const items = await page.locator("#reference dt").allTextContents();
    const values = await page.locator("#reference dd").allTextContents();
    items.forEach((k, i) => (reference[k] = values[i]));
    report.reference = reference;
    report.cache = await page.textContent("#cache");
    await page.screenshot({ path: screenshot, fullPage: true });

    await page.click("#delete");
    await page.waitForFunction(() => document.getElementById("message").textContent.startsWith("Deleted"));
    report.deleted_message = await page.textContent("#message");
    await page.click("#prefix-form button");
    await page.waitForTimeout(0);
    await page.waitForFunction(() => document.getElementById("message").textContent.includes("No results") ||
      document.querySelectorAll("#keys li").length > 0);
    report.still_listed = (await page.locator(`#keys li[data-key="${key}"]`).count()) > 0;
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
