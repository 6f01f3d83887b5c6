// The console's entry: sign-in, the routes (`#/` agents, `#/agents/<name>` the Agent
// endpoint page, `#/agents/<name>/runs/<id>` one run) and the agents list.

import { api, whenSignedOut } from "./api.js";
import { h, fill, redraw, notice, when } from "./dom.js";
import { agentPage } from "./agent.js";
import { runPage } from "./runs.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");

/**
 * The page on screen. Each route gets a new one: a page still loading when the user moves
 * on sees `alive()` turn false and draws nothing, and what it registered with `onLeave`
 * (timers) stops when the next page is shown.
 */
let current = { alive: () => false, leave: () => {} };

function newPage() {
  current.leave();
  const cleanups = [];
  let alive = true;
  current = {
    alive: () => alive,
    onLeave: (fn) => cleanups.push(fn),
    leave: () => {
      alive = false;
      cleanups.splice(0).forEach((fn) => fn());
    },
  };
  return current;
}

whenSignedOut(() => {
  if (current.signIn) return;
  // A dialog left open would stay over the sign-in form, and keep it from the keyboard;
  // but not one showing a secret shown only once (closed, it could not be seen again).
  document.querySelectorAll("dialog[open]:not([data-keep])").forEach((open) => open.close());
  signIn("Your session ended. Sign in again.");
});

async function start() {
  let session = null;
  try {
    session = await api("GET", "/console/session");
  } catch (err) {
    signIn(`The host did not answer: ${err.message}`);
    return;
  }
  if (session.signed_in) route();
  else signIn();
}

window.addEventListener("hashchange", route);

function route() {
  const page = newPage();
  fill(nav,
    h("a", { href: "#/" }, "Agents"),
    h("button", { type: "button", class: "link", onclick: signOut }, "Sign out"));
  let path = "/";
  try {
    path = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  } catch {
    // A hand-typed `%` that is not an escape: the agents list.
  }
  const run = path.match(/^\/agents\/([^/]+)\/runs\/([^/]+)$/);
  const agent = path.match(/^\/agents\/([^/]+)\/?$/);
  if (run) runPage(main, page, run[1], run[2]);
  else if (agent) agentPage(main, page, agent[1]);
  else agentsList(main, page);
  main.focus({ preventScroll: true });
}

function signIn(message) {
  const page = newPage();
  page.signIn = true;
  fill(nav);
  document.title = "Sign in · gust";
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true, autofocus: true });
  const status = h("div", { "aria-live": "polite" }, message ? notice("info", message) : null);
  const form = h("form", { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", { class: "muted" }, "Use this host's admin token. ",
      "It is in the data folder (", h("code", {}, "admin-token"), ") or was given with ", h("code", {}, "--admin-token"), "."),
    h("label", { for: "token" }, "Admin token"),
    input,
    status,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("POST", "/console/session", { token: input.value });
      input.value = "";
      route();
    } catch (err) {
      fill(status, notice("error", err.message));
      input.select();
    }
  });
  fill(main, form);
  input.focus();
}

async function signOut() {
  try {
    await api("DELETE", "/console/session");
  } finally {
    // The address goes back to the list without a `hashchange`: one would route to the
    // list, draw it over the form and read the API without a session.
    history.replaceState(null, "", "#/");
    signIn("Signed out.");
  }
}

async function agentsList(root, page) {
  document.title = "Agents · gust";
  const body = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const name = h("input", { id: "new-agent", name: "agent", required: true, pattern: "[a-z0-9][a-z0-9\\-]{0,62}", placeholder: "my-agent", autocomplete: "off" });
  const create = h("form", { class: "inline" },
    h("label", { for: "new-agent" }, "New agent"), name,
    h("button", { type: "submit" }, "Open"));
  create.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/agents/${encodeURIComponent(name.value.trim())}`;
  });
  fill(root, h("div", { class: "page-head" }, h("h1", {}, "Agents"), create), body);

  // The last drawing's agents: the list is read every 5 s, and a refresh that finds it
  // unchanged draws nothing (the list is a live region: a new drawing is read out again).
  let drawn = null;
  const load = async () => {
    let answer;
    try {
      answer = await api("GET", "/v1/agents");
    } catch (err) {
      if (page.alive()) redraw(body, notice("error", err.message));
      drawn = null;
      return;
    }
    if (!page.alive()) return;
    const seen = JSON.stringify(answer.agents);
    if (seen === drawn) return;
    drawn = seen;
    if (!answer.agents.length) {
      redraw(body, h("div", { class: "card" },
        h("p", {}, "No agents yet. Name one above, then upload its component on its page, or run ",
          h("code", {}, "gust deploy"), " in an agent's project.")));
      return;
    }
    // The keyboard stays on the agent it was on.
    redraw(body, h("div", { class: "table-wrap" }, h("table", {},
      h("caption", { class: "visually-hidden" }, "Agents on this host"),
      h("thead", {}, h("tr", {},
        ["Agent", "Live version", "Mode", "Deployed", "Draft", "Calls", "Failures", "Queued", "Running"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, answer.agents.map((a) => h("tr", {},
        h("th", { scope: "row" }, h("a", { href: `#/agents/${encodeURIComponent(a.agent)}` }, a.agent)),
        h("td", {}, a.live ? `v${a.live.version}` : h("span", { class: "muted" }, "not deployed")),
        h("td", {}, a.mode ? h("span", { class: `badge ${a.mode}` }, a.mode === "async" ? "Async" : "Sync") : "—"),
        h("td", {}, when(a.deployed_at)),
        h("td", {}, a.live && (a.draft_pending || a.newest_version !== a.live.version)
          ? h("span", { class: "badge warn" }, "redeploy needed") : "—"),
        h("td", { class: "num" }, a.calls),
        h("td", { class: "num" }, a.failures),
        h("td", { class: "num" }, a.runs_queued),
        h("td", { class: "num" }, a.runs_running)))))));
  };
  await load();
  if (!page.alive()) return;
  const timer = setInterval(load, 5000);
  page.onLeave(() => clearInterval(timer));
}

start();
