// The console's scenarios in a real browser: Debian's Chromium, driven by playwright-core,
// against a live gust host. Run by tests/e2e/console.rs (which starts the host), and by
// scripts/screenshots (which keeps the pictures under docs/console/).
//
//     GUST_URL=http://127.0.0.1:8080 GUST_ADMIN_TOKEN=... GOOD_WASM=a.wasm NEWER_WASM=b.wasm \
//     BROKEN_WASM=bad.wasm [SCREENSHOTS=folder] [CHROMIUM=/usr/bin/chromium] node scenarios.mjs
//
// Every step checks what a user would see; along the way: no console errors, a CSP header on
// every response, no serious accessibility violation (axe-core) on any page, no sideways
// scrolling at 375 px, and the main flow done by keyboard alone. Exits non-zero on the first
// failure, naming the step.

import http from "node:http";
import { execFileSync } from "node:child_process";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";
import { Webhook } from "standardwebhooks";

const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = need("GUST_URL");
const token = need("GUST_ADMIN_TOKEN");
const good = need("GOOD_WASM");
const newer = need("NEWER_WASM");
const broken = need("BROKEN_WASM");
const shots = process.env.SCREENSHOTS;
const agent = "probe";
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

let step = "start";
const problems = [];
/** Console messages a step expects (an answer it provokes on purpose, a CSP report). */
let expected = [];

function check(condition, message) {
  if (!condition) throw new Error(`${step}: ${message}`);
}

async function eventually(what, condition, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > end) throw new Error(`${step}: ${what} did not happen within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// The user's application: records the pushes it gets; they are verified below with the
// secret the console showed, by the standardwebhooks package.
const pushes = [];
const receiver = http.createServer((request, response) => {
  const chunks = [];
  request.on("data", (c) => chunks.push(c));
  request.on("end", () => {
    pushes.push({ headers: request.headers, body: Buffer.concat(chunks).toString("utf8") });
    response.writeHead(204).end();
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
const receiverUrl = `http://127.0.0.1:${receiver.address().port}/gust-results`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
console.log(`browser: Chromium ${browser.version()}`);
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
const page = await context.newPage();
page.setDefaultTimeout(15000);
page.on("console", (m) => {
  if (m.type() !== "error") return;
  if (expected.some((pattern) => pattern.test(m.text()))) return;
  problems.push(`${step}: console error: ${m.text()}`);
});
page.on("pageerror", (e) => problems.push(`${step}: page error: ${e.message}`));
page.on("response", (r) => {
  if (r.url().startsWith(base) && !r.headers()["content-security-policy"]) {
    problems.push(`${step}: no Content-Security-Policy on ${r.request().method()} ${r.url()}`);
  }
});

const allow4xx = (...codes) => codes.map((c) => new RegExp(`status of ${c}`));

/** A picture of the page as seen (`what` omitted), the whole page (`"full"`), or one part. */
async function shot(name, what) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await page.waitForTimeout(150);
  const path = `${shots}/${name}.png`;
  if (what && what !== "full") await page.locator(what).screenshot({ path });
  else await page.screenshot({ path, fullPage: what === "full" });
}

/** No serious accessibility violation, and no sideways scrolling at 375 px. */
async function checkPage(name) {
  // Evaluated through the DevTools protocol, which the page's CSP does not govern (a
  // <script> tag would be refused, as it should be).
  await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ["violations"] });
    return result.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id} (${v.help}): ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
  });
  check(violations.length === 0, `accessibility of ${name}: ${violations.join("; ")}`);
  await page.setViewportSize({ width: 375, height: 800 });
  await page.waitForTimeout(100);
  const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  check(scroll <= inner, `${name} scrolls sideways at 375 px (${scroll} > ${inner})`);
  if (shots) await page.screenshot({ path: `${shots}/${name.replace(/\W+/g, "-").replace(/-$/, "")}-375.png`, fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function tabTo(selector, max = 120) {
  for (let i = 0; i < max; i++) {
    if (await page.evaluate((s) => document.activeElement && document.activeElement.matches(s), selector)) return;
    await page.keyboard.press("Tab");
  }
  throw new Error(`${step}: ${selector} cannot be reached with Tab`);
}

const api = async (method, path, { key, body } = {}) => {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { "x-api-key": key || "", ...(key ? {} : { Authorization: `Bearer ${token}` }), "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
};

try {
  step = "sign in";
  expected = allow4xx(401);
  await page.goto(`${base}/`);
  await page.getByLabel("Admin token").fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("that is not the admin token").waitFor();
  await checkPage("sign-in");
  await shot("sign-in");
  // By keyboard: the field has focus again; type the token and press Enter.
  await page.getByLabel("Admin token").fill("");
  await page.getByLabel("Admin token").focus();
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Agents" }).waitFor();
  expected = [];
  const kept = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
  check(!kept.includes(token) && !kept.includes("gust_session"), "the token or the session is readable by scripts");
  const cookie = (await context.cookies()).find((c) => c.name === "gust_session");
  check(cookie && cookie.httpOnly && cookie.sameSite === "Strict", `session cookie flags: ${JSON.stringify(cookie)}`);
  await checkPage("agents (empty)");

  step = "an injected inline script is blocked";
  expected = [/Content Security Policy/];
  const violated = await page.evaluate(() => new Promise((resolve) => {
    document.addEventListener("securitypolicyviolation", (e) => resolve(e.effectiveDirective), { once: true });
    const script = document.createElement("script");
    script.textContent = "window.injected = true";
    document.body.append(script);
    setTimeout(() => resolve(null), 3000);
  }));
  check(violated && violated.startsWith("script-src"), `no CSP violation reported (${violated})`);
  check(!(await page.evaluate(() => window.injected)), "the inline script ran");
  expected = [];

  step = "a refused upload shows its diagnostics and leaves Deploy disabled";
  await page.getByLabel("New agent").fill(agent);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: /probe/ }).waitFor();
  check(await page.locator("#deploy").isDisabled(), "Deploy is enabled with nothing uploaded");
  expected = allow4xx(422);
  await page.setInputFiles("#upload-file", broken);
  const diagnostics = await page.locator(".diagnostics").textContent();
  check(diagnostics.includes("unknown_import"), `diagnostics: ${diagnostics}`);
  check(await page.locator("#deploy").isDisabled(), "Deploy is enabled after a refused upload");
  await checkPage("refused upload");
  await shot("refused-upload");

  step = "upload, then Deploy and Confirm by keyboard";
  await page.setInputFiles("#upload-file", good);
  await page.getByText("passed the check").waitFor();
  expected = [];
  check(await page.locator("#deploy").isEnabled(), "Deploy stays disabled after a good upload");
  await page.locator("body").focus();
  await tabTo("#deploy");
  await page.keyboard.press("Enter");
  const confirm = page.getByRole("dialog", { name: "Confirm deploy" });
  await confirm.waitFor();
  check((await confirm.textContent()).includes("not deployed yet"), "the dialog does not say what the deploy does");
  await shot("confirm-dialog");
  await page.keyboard.press("Enter");
  await page.getByText("Deployed: deployment 1").waitFor();
  const sync = page.locator('[data-endpoint="sync"]');
  await sync.waitFor();

  step = "the copied curl snippet answers";
  await page.getByRole("button", { name: "Create a key for this code" }).click();
  const key = (await page.locator("#new-key-line").textContent()).replace("export GUST_API_KEY=", "").trim();
  // The Keys section lists the key made for the code.
  await page.locator("#keys-table").getByRole("rowheader", { name: /^console / }).waitFor();
  await sync.locator('[role="tabpanel"]:not([hidden]) button.copy').click();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  check(copied.startsWith("curl "), `copied: ${copied}`);
  const answer = execFileSync("bash", ["-c", copied], { env: { PATH: process.env.PATH, GUST_API_KEY: key }, encoding: "utf8" });
  check(JSON.parse(answer).marker === "a", `the snippet printed ${answer}`);
  await sync.getByRole("tab", { name: "Python" }).click();
  check((await sync.locator('pre[data-lang="python"]').textContent()).includes("urllib.request"), "the Python tab");
  await checkPage("endpoint page (sync)");
  await shot("endpoint-sync", "full");

  step = "switch to Async and configure it, by keyboard";
  // While the page is open, someone else sets a key of the draft (`gust config --set` in a
  // terminal): the console's own change must be made on the draft as it is now, not write
  // back the draft this page read.
  const elsewhere = await api("GET", `/v1/agents/${agent}/config`);
  elsewhere.body.config.set_elsewhere = "kept";
  const put = await api("PUT", `/v1/agents/${agent}/config`, { body: elsewhere.body });
  check(put.status === 200, `the draft written elsewhere: ${put.status}`);
  await page.locator("body").focus();
  await tabTo('input[name="mode"]');
  await page.keyboard.press("ArrowDown");
  const configure = page.getByRole("dialog", { name: "Configure asynchronous mode" });
  await configure.waitFor();
  check(await page.evaluate(() => document.activeElement.id === "push-url-input"), "focus is not in the dialog's first field");
  await page.keyboard.type(receiverUrl);
  await page.keyboard.press("Tab");
  await page.keyboard.type("app-token-1");
  await shot("configure-dialog");
  await page.keyboard.press("Enter");
  const secretDialog = page.getByRole("dialog", { name: "Signing secret" });
  await secretDialog.waitFor();
  const secret = (await page.locator("#signing-secret").textContent()).trim();
  check(secret.startsWith("whsec_"), `secret: ${secret}`);
  // Where the clipboard API is refused (plain http on a name other than localhost), the
  // copy falls back to a selection, and that must copy the secret, not leave the clipboard
  // as it was while the button says "Copied".
  await page.evaluate(() => {
    window.realWriteText = navigator.clipboard.writeText.bind(navigator.clipboard);
    navigator.clipboard.writeText = () => Promise.reject(new DOMException("not a secure context", "NotAllowedError"));
  });
  await secretDialog.getByRole("button", { name: "Copy secret" }).click();
  await secretDialog.getByRole("button", { name: "Copied" }).waitFor();
  const pasted = await page.evaluate(() => navigator.clipboard.readText());
  check(pasted === secret, `the fallback copied ${pasted}`);
  await page.evaluate(() => { navigator.clipboard.writeText = window.realWriteText; });
  await page.keyboard.press("Escape");
  const banner = page.locator("#redeploy-banner");
  await banner.waitFor();
  // The page drawn again (with the banner above the radios) keeps the keyboard on Async.
  const onMode = await page.evaluate(() => `${document.activeElement.name}=${document.activeElement.value}`);
  check(onMode === "mode=async", `after configuring Async the keyboard is on ${onMode}`);
  const bannerText = await banner.textContent();
  check(bannerText.includes("mode") && bannerText.includes("push.url"), `banner: ${bannerText}`);
  check((await page.locator("#push-url").textContent()) === receiverUrl, "the push URL is not shown");
  check(!(await page.content()).includes("app-token-1"), "the access token is shown");
  const draft = (await api("GET", `/v1/agents/${agent}/config`)).body;
  check(draft.mode === "async" && draft.config.set_elsewhere === "kept", `the key set elsewhere is lost: ${JSON.stringify(draft)}`);
  await shot("redeploy-needed");

  step = "redeploy: the Confirm dialog shows the change, then push and poll endpoints";
  await page.locator("body").focus();
  await tabTo("#deploy");
  await page.keyboard.press("Enter");
  await confirm.waitFor();
  const changes = await confirm.textContent();
  check(changes.includes("mode") && changes.includes("async") && changes.includes("push.access_token"), `confirm: ${changes}`);
  check(!changes.includes("app-token-1"), "the confirm dialog shows the access token");
  // The draft changes while the dialog is open (someone else's `gust config`): Deploy was
  // pressed for what the dialog showed, so nothing is deployed and the page says why.
  expected = allow4xx(412);
  const during = await api("GET", `/v1/agents/${agent}/config`);
  during.body.config.while_confirming = "yes";
  check((await api("PUT", `/v1/agents/${agent}/config`, { body: during.body })).status === 200, "the draft written elsewhere");
  await page.keyboard.press("Enter");
  await page.getByText("Nothing was deployed: the configuration changed while the Confirm dialog was open").waitFor();
  const still = (await api("GET", `/v1/agents/${agent}`)).body;
  check(still.live.deployment === 1, `a deploy was made: ${JSON.stringify(still.live)}`);
  expected = [];
  await page.locator("body").focus();
  await tabTo("#deploy");
  await page.keyboard.press("Enter");
  await confirm.waitFor();
  check((await confirm.textContent()).includes("while_confirming"), "the second Confirm dialog shows the new key");
  // A key that is not live has no value there to hide.
  const notLive = await confirm.locator("tr", { has: page.getByText("config.while_confirming") }).locator("td").first().textContent();
  check(notLive === "—", `the live side of a key not live reads ${notLive}`);
  await page.keyboard.press("Enter");
  await page.locator('[data-endpoint="async_push"]').waitFor();
  await page.locator('[data-endpoint="async_poll"]').waitFor();
  check((await page.locator("#redeploy-banner").count()) === 0, "the banner stays after the deploy");
  const syncUrl = await sync.locator("code.url").textContent();
  check(syncUrl === `${base}/v1/agents/${agent}/run`, `the endpoint changed: ${syncUrl}`);
  await checkPage("endpoint page (async)");
  await shot("endpoint-async", "full");

  step = "a submitted run shows its progress, succeeds, and is pushed signed";
  const submitted = await api("POST", `/v1/agents/${agent}/runs`, { key, body: { op: "steps", n: 4, ms: 700 } });
  check(submitted.status === 202, `submit: ${JSON.stringify(submitted)}`);
  const runId = submitted.body.run_id;
  await page.locator(`#runs-table tr[data-run="${runId}"]`).waitFor();
  await page.waitForFunction((id) => {
    const bar = document.querySelector(`tr[data-run="${id}"] progress`);
    return bar && Number(bar.value) > 0 && Number(bar.value) < 1;
  }, runId, { timeout: 20000 });
  await shot("runs-table", 'section[aria-labelledby="runs-title"]');
  // A keyboard user on the run's link while the table refreshes stays on it.
  await page.locator(`tr[data-run="${runId}"] a`).focus();
  await page.locator(`tr[data-run="${runId}"][data-status="succeeded"]`).waitFor({ timeout: 30000 });
  const onRun = await page.evaluate(() => document.activeElement.closest("tr")?.dataset.run || document.activeElement.tagName);
  check(onRun === runId, `the refresh moved the keyboard from the run's link to ${onRun}`);
  const push = await eventually("the push", () => pushes.find((p) => p.body.includes(runId)));
  check(push.headers.authorization === "Bearer app-token-1", `push authorization: ${push.headers.authorization}`);
  const event = new Webhook(secret).verify(push.body, push.headers);
  check(event.type === "run.succeeded" && event.data.run_id === runId, `event: ${JSON.stringify(event)}`);
  await page.locator(`tr[data-run="${runId}"] a`).click();
  await page.getByRole("heading", { name: /Run/ }).waitFor();
  await eventually("delivered", async () => (await page.locator("#delivery-status").textContent()) === "delivered");
  check((await page.locator("main").textContent()).includes("\"marker\": \"a\""), "the run page shows no output");
  await checkPage("run page");
  await shot("run-page", "full");
  // Redeliver: the application gets the same event again, with the same webhook-id.
  await page.getByRole("button", { name: "Redeliver" }).click();
  await page.getByText("being delivered again").waitFor();
  const again = await eventually("the redelivery", () => {
    const same = pushes.filter((p) => p.body.includes(runId));
    return same.length >= 2 && same;
  });
  check(again[1].headers["webhook-id"] === again[0].headers["webhook-id"], "the redelivery has another webhook-id");
  // Rerun: a new run with the same input, and its page; a double click makes one run.
  const runsBefore = (await api("GET", `/v1/agents/${agent}/runs?limit=100`)).body.runs.length;
  await page.getByRole("button", { name: "Rerun" }).dblclick();
  await page.waitForFunction((id) => location.hash.includes("/runs/") && !location.hash.endsWith(id), runId);
  await page.waitForTimeout(500);
  const runsAfter = (await api("GET", `/v1/agents/${agent}/runs?limit=100`)).body.runs.length;
  check(runsAfter === runsBefore + 1, `runs queued by a double click on Rerun: ${runsAfter - runsBefore}`);
  await page.locator("#input-title").waitFor();
  await eventually("the rerun's input", async () => (await page.locator("main").textContent()).includes("\"op\": \"steps\""));

  step = "the deployed version, read-only, beside a newer draft";
  await page.getByRole("link", { name: agent }).click();
  await page.locator("#deployed-version").waitFor();
  // This one is dropped on the page, as from a file manager.
  const dropped = await page.evaluateHandle((bytes) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0))], "probe-b.wasm", { type: "application/wasm" }));
    return transfer;
  }, readFileSync(newer).toString("base64"));
  await page.dispatchEvent("#dropzone", "dragover", { dataTransfer: dropped });
  await page.dispatchEvent("#dropzone", "drop", { dataTransfer: dropped });
  await page.getByText("Version 2 passed the check").waitFor();
  await page.locator("#redeploy-banner").getByText("Version 2 is not live yet").waitFor();
  const deployed = await page.locator("#deployed-version").textContent();
  check(deployed.includes("Deployed version 1") && deployed.includes("read-only") && deployed.includes("world"), `deployed: ${deployed}`);
  // Configuration values are often API keys: hidden until asked for, as in the Confirm dialog.
  const frozen = page.locator('#deployed-version pre[data-config="live"]');
  check(!(await frozen.textContent()).includes("kept"), "a configuration value is shown before Show values");
  await page.locator('#deployed-version [data-reveal="live"]').click();
  check((await frozen.textContent()).includes("\"set_elsewhere\": \"kept\""), "Show values does not show the values");
  check((await page.locator("#deployed-version input, #deployed-version textarea, #deployed-version select").count()) === 0, "the deployed version has inputs");
  check((await page.locator("#draft-version").textContent()).includes("2 (uploaded"), "the draft does not show version 2");
  await page.locator("#deployed-version details").nth(1).locator("summary").click();
  await checkPage("versions");
  await shot("deployed-version", 'section[aria-labelledby="versions-title"]');

  step = "deploy version 2, then roll back to deployment 2";
  await page.locator("#deploy").click();
  await confirm.waitFor();
  check((await confirm.textContent()).includes("1 → 2"), "the confirm dialog does not show the version change");
  await confirm.getByRole("button", { name: "Deploy" }).click();
  await page.getByText("Deployed: deployment 3 (version 2)").waitFor();
  const b = await api("POST", `/v1/agents/${agent}/run`, { key, body: {} });
  check(b.body.marker === "b", `after deploying version 2: ${JSON.stringify(b)}`);
  await page.locator('[data-rollback="2"]').click();
  const rollback = page.getByRole("dialog", { name: "Confirm rollback" });
  await rollback.waitFor();
  check((await rollback.textContent()).includes("deployment 2"), "the rollback dialog does not name its target");
  await rollback.getByRole("button", { name: "Roll back to deployment 2" }).click();
  await page.getByText("Rolled back").waitFor();
  const a = await api("POST", `/v1/agents/${agent}/run`, { key, body: {} });
  check(a.body.marker === "a", `after the rollback: ${JSON.stringify(a)}`);
  check((await page.locator("#live-status").textContent()).includes("version 1"), "the page does not show version 1 live");

  step = "create and revoke a key";
  await page.getByLabel("Key name").fill("ci-key");
  await page.getByRole("button", { name: "Create key" }).click();
  const created = (await page.locator("#created-key").textContent()).trim();
  check((await api("POST", `/v1/agents/${agent}/run`, { key: created, body: {} })).status === 200, "the new key is refused");
  const row = page.locator("#keys-table tr", { has: page.getByRole("rowheader", { name: "ci-key" }) });
  await row.getByRole("button", { name: "Revoke" }).click();
  const revoke = page.getByRole("dialog", { name: "Revoke key" });
  await revoke.getByRole("button", { name: "Revoke" }).click();
  await page.getByText("Key “ci-key” revoked.").waitFor();
  // Its button is gone: the keyboard goes to what the revoke answered, not to the top.
  const landed = await page.evaluate(() => document.activeElement.textContent);
  check(landed === "Key “ci-key” revoked.", `after the revoke the keyboard is on ${landed.slice(0, 60) || "the page"}`);
  check((await api("POST", `/v1/agents/${agent}/run`, { key: created, body: {} })).status === 401, "the revoked key still works");
  await checkPage("endpoint page (keys)");

  step = "older runs are a button away";
  for (let i = 0; i < 55; i++) {
    const more = await api("POST", `/v1/agents/${agent}/runs`, { key, body: { i } });
    check(more.status === 202, `submit ${i}: ${more.status}`);
  }
  let total = 0;
  for (let cursor = ""; ;) {
    const listed = (await api("GET", `/v1/agents/${agent}/runs?limit=200${cursor}`)).body;
    total += listed.runs.length;
    if (!listed.next_cursor) break;
    cursor = `&cursor=${listed.next_cursor}`;
  }
  await page.locator("#runs-more").waitFor();
  check((await page.locator("#runs-table tbody tr").count()) === 50, "the first page is not 50 runs");
  await page.locator("#runs-more").click();
  await eventually(`all ${total} runs in the table`, async () => (await page.locator("#runs-table tbody tr").count()) === total);
  check((await page.locator("#runs-more").count()) === 0, "Show more runs stays with every run shown");
  // Two filters that both find nothing are two different pages.
  await page.locator("#runs-status").selectOption("failed");
  await page.getByText("No failed runs.").waitFor();
  await page.locator("#runs-status").selectOption("cancelled");
  await page.getByText("No cancelled runs.").waitFor();
  await page.locator("#runs-status").selectOption("");
  await page.locator("#runs-table").waitFor();

  step = "a double click makes one key, and one deployment";
  await page.getByLabel("Key name").fill("twice");
  await page.getByRole("button", { name: "Create key" }).dblclick();
  await page.locator("#created-key").waitFor();
  await page.waitForTimeout(500);
  const twice = (await api("GET", `/v1/agents/${agent}/keys`)).body.keys.filter((k) => k.name === "twice");
  check(twice.length === 1, `keys made by a double click: ${twice.length}`);
  const deployments = (await api("GET", `/v1/agents/${agent}`)).body.deployments.length;
  await page.locator("#deploy").dblclick();
  await confirm.waitFor();
  await page.waitForTimeout(500);
  check((await page.getByRole("dialog", { name: "Confirm deploy" }).count()) === 1, "two Confirm dialogs");
  await confirm.getByRole("button", { name: "Deploy" }).click();
  await page.getByText(`Deployed: deployment ${deployments + 1}`).waitFor();
  await page.waitForTimeout(500);
  const now = (await api("GET", `/v1/agents/${agent}`)).body.deployments.length;
  check(now === deployments + 1, `deployments after a double click: ${deployments} → ${now}`);

  step = "the Configure dialog closed while its save is on its way";
  // The save takes a moment (a slow link); Escape right after Save must not lose what it
  // saved: the page shows the new URL once the save is done.
  const slowSave = async (route) => {
    if (route.request().method() === "PUT") await new Promise((r) => setTimeout(r, 1500));
    await route.continue();
  };
  await page.route("**/config", slowSave);
  await page.locator("#configure").click();
  await configure.waitFor();
  const secondUrl = `${receiverUrl}?second`;
  await page.locator("#push-url-input").fill(secondUrl);
  await page.locator("#push-token-input").fill("app-token-2");
  await page.keyboard.press("Enter");
  await page.waitForTimeout(200);
  await page.keyboard.press("Escape");
  await page.waitForFunction((url) => document.getElementById("push-url")?.textContent === url, secondUrl, { timeout: 10000 });
  await page.unroute("**/config", slowSave);

  step = "a part of the page that cannot be read says so";
  expected = allow4xx(503);
  const refuseReads = (route) => route.request().method() === "GET"
    ? route.fulfill({
      status: 503,
      contentType: "application/json",
      headers: { "content-security-policy": "default-src 'none'" },
      body: '{"error":{"kind":"unavailable","message":"database unavailable"}}',
    })
    : route.continue();
  await page.route("**/keys", refuseReads);
  await page.reload();
  await page.getByText("Part of this page could not be read: the keys (database unavailable)").waitFor();
  check((await page.getByText("No keys yet.").count()) === 0, "a failed read shown as no keys");
  // A key made while the endpoints cannot be read again: the page drawn after it has no
  // place for the key, which is shown only this once; a dialog shows it.
  await page.route("**/endpoints", refuseReads);
  await page.getByRole("button", { name: "Create a key for this code" }).click();
  const newKey = page.getByRole("dialog", { name: "New key" });
  await newKey.waitFor();
  check((await newKey.locator("#new-key-line").textContent()).startsWith("export GUST_API_KEY="), "the dialog does not show the key");
  await page.keyboard.press("Escape");
  await page.unroute("**/endpoints", refuseReads);
  await page.unroute("**/keys", refuseReads);
  expected = [];

  step = "signed out elsewhere while a dialog is open";
  expected = allow4xx(401);
  await page.reload();
  await page.locator("#configure").click();
  await configure.waitFor();
  // Another tab signs out: the next request of this one finds no session.
  await page.evaluate(() => fetch("/console/session", { method: "DELETE" }));
  await page.locator("#push-token-input").fill("app-token-3");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  check((await page.locator("dialog[open]").count()) === 0, "a dialog stays over the sign-in form");
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("nav").getByRole("link", { name: "Agents" }).waitFor();
  expected = [];

  step = "sign out from an agent's page";
  await page.goto(`${base}/#/agents/${agent}`);
  await page.getByRole("heading", { name: /Agent endpoint/ }).waitFor();
  // The page reads its runs every 2 s: one under way when the session ends is refused
  // (401), which is fine. A read the page starts once signed out is not: that is the list
  // drawn over the form and read without a session.
  expected = allow4xx(401);
  let ended = false;
  const startedAfter = new WeakSet();
  const readAfter = [];
  const onRequest = (q) => { if (ended) startedAfter.add(q); };
  const onResponse = (r) => {
    if (r.request().method() === "DELETE" && new URL(r.url()).pathname === "/console/session") ended = true;
    else if (r.status() === 401 && startedAfter.has(r.request())) readAfter.push(r.url());
  };
  page.on("request", onRequest);
  page.on("response", onResponse);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  // Time for what the sign-out might set off: the list drawn over the form, its read
  // refused, the form drawn again as if the session had run out.
  await page.waitForTimeout(700);
  page.off("request", onRequest);
  page.off("response", onResponse);
  check(ended, "the sign-out did not end the session");
  check(readAfter.length === 0, `read without a session after signing out: ${readAfter.join(", ")}`);
  check(await page.getByText("Signed out.").isVisible(), "the sign-in form does not say it signed out");
  check(await page.getByLabel("Admin token").isVisible(), "the sign-in form was replaced");
  expected = [];
  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("nav").getByRole("link", { name: "Agents" }).waitFor();

  step = "the agents list";
  await page.goto(`${base}/#/`);
  const listed = page.locator("tbody tr", { has: page.getByRole("link", { name: agent }) });
  await listed.waitFor();
  const line = await listed.textContent();
  // Version 2: the double-clicked deploy above made the newest version live.
  check(line.includes("v2") && line.includes("Async"), `the list shows ${line}`);
  await checkPage("agents");
  await shot("agents", "main");

  step = "sign out";
  expected = allow4xx(401);
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  const after = await page.evaluate(async () => (await fetch("/v1/agents")).status);
  check(after === 401, `the API answered ${after} after sign-out`);
  // A page opened without a session asks to sign in, and stays asking (its failed loads
  // draw nothing over the form).
  await page.evaluate((agent) => { location.hash = `#/agents/${agent}`; }, agent);
  await page.getByText("Your session ended. Sign in again.").waitFor();
  await page.waitForTimeout(500);
  check(await page.getByLabel("Admin token").isVisible(), "the sign-in form was replaced");
  expected = [];

  check(problems.length === 0, problems.join("\n"));
  console.log("console scenarios passed");
} catch (e) {
  console.error(e.message);
  if (problems.length) console.error(problems.join("\n"));
  if (shots) await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
  receiver.close();
}
