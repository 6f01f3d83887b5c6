// Runs: the live table on the Agent endpoint page (filters, progress, delivery) and a run's
// own page (input, output, logs, outbound calls, delivery; Cancel, Rerun, Redeliver).

import { api, agentPath } from "./api.js";
import { h, fill, redraw, park, notice, when, duration, confirmDialog, oneAtATime } from "./dom.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled", "expired"];
const ACTIVE = new Set(["queued", "running"]);
// Runs per page of the table.
const PAGE = 50;

/** Fills `root` with the agent's runs, refreshed every 2 s; returns the function that stops. */
export function runsSection(root, agent) {
  let status = "";
  const filter = h("select", { id: "runs-status", name: "status" },
    STATUSES.map((s) => h("option", { value: s }, s || "all")));
  const table = h("div", { "aria-live": "off" });
  const refreshed = h("span", { class: "muted small" });
  filter.addEventListener("change", () => { status = filter.value; wanted = PAGE; load(); });
  fill(root,
    h("div", { class: "section-head" },
      h("h2", { id: "runs-title" }, "Runs"),
      h("div", { class: "inline" }, h("label", { for: "runs-status" }, "Status"), filter, refreshed)),
    table);
  root.classList.add("card");

  let stopped = false;
  // How many runs are shown: a page at first, a page more for each "Show more runs".
  let wanted = PAGE;
  // A slow answer for the previous filter must not replace the current one's.
  let latest = 0;
  // The last drawing's runs: a refresh that finds them unchanged draws nothing.
  let drawn = null;
  // Whether the newest load is still reading: the timer starts none beside it, or loads of
  // many pages, each slower than the timer, would overtake one another and never draw.
  let loading = false;
  async function load() {
    const mine = ++latest;
    loading = true;
    const runs = [];
    let more = false;
    try {
      let cursor = null;
      do {
        const limit = Math.min(wanted - runs.length, 200);
        const answer = await api("GET", `${agentPath(agent)}/runs?limit=${limit}${status ? `&status=${status}` : ""}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
        // Overtaken (another filter, more runs asked for): its pages are not needed.
        if (stopped || mine !== latest) return;
        runs.push(...answer.runs);
        cursor = answer.next_cursor;
      } while (cursor && runs.length < wanted);
      more = !!cursor;
    } catch (err) {
      if (!stopped && mine === latest) redraw(table, notice("error", err.message));
      drawn = null;
      return;
    } finally {
      if (mine === latest) loading = false;
    }
    fill(refreshed, `updated ${new Date().toLocaleTimeString()}`);
    // An active run's duration grows with the clock: draw it again. The filter is part of
    // what is drawn ("No failed runs." is not "No cancelled runs.").
    const seen = JSON.stringify([status, runs, more]);
    if (seen === drawn && !runs.some((r) => ACTIVE.has(r.status))) return;
    drawn = seen;
    if (!runs.length) {
      redraw(table, h("p", { class: "muted" }, status ? `No ${status} runs.` : "No runs yet. Submit one with the Async push or poll code above."));
      return;
    }
    // The keyboard stays on the run it was on while the table is drawn again.
    redraw(table, [h("div", { class: "table-wrap" }, h("table", { id: "runs-table" },
      h("thead", {}, h("tr", {}, ["Run", "Status", "Progress", "Attempts", "Duration", "Delivery", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, runs.map((r) => h("tr", { "data-run": r.run_id, "data-status": r.status },
        h("th", { scope: "row" }, h("a", { href: `#/agents/${encodeURIComponent(agent)}/runs/${encodeURIComponent(r.run_id)}` }, h("code", {}, r.run_id.slice(0, 12)))),
        h("td", {}, statusBadge(r.status)),
        h("td", {}, progressCell(r)),
        h("td", { class: "num" }, r.attempts),
        h("td", {}, duration(r.started_at, r.finished_at)),
        h("td", {}, r.delivery ? deliveryText(r.delivery) : "—"),
        h("td", {}, when(r.created_at))))))),
    more ? h("div", { class: "actions left" }, h("button", { type: "button", id: "runs-more", onclick: () => { wanted += PAGE; load(); } }, "Show more runs")) : null],
    () => table.querySelector("table") || table);
  }
  load();
  const timer = setInterval(() => { if (!loading) load(); }, 2000);
  return () => { stopped = true; clearInterval(timer); };
}

function statusBadge(status) {
  const kind = status === "succeeded" ? "ok" : ACTIVE.has(status) ? "info" : status === "failed" ? "error" : "";
  return h("span", { class: `badge ${kind}` }, status);
}

function progressCell(run) {
  const p = run.progress;
  const fraction = p && typeof p.fraction === "number" ? p.fraction : run.status === "succeeded" ? 1 : null;
  return h("div", { class: "progress-cell" },
    fraction === null ? null : h("progress", { max: "1", value: String(fraction), "aria-label": `Progress ${Math.round(fraction * 100)}%` }),
    p && p.message ? h("span", { class: "small" }, p.message) : null);
}

function deliveryText(d) {
  return `${d.status}${d.attempts ? ` (${d.attempts} attempt${d.attempts === 1 ? "" : "s"})` : ""}`;
}

function payload(p) {
  if (!p) return h("p", { class: "muted" }, "—");
  if ("json" in p) return h("pre", { tabindex: "0" }, JSON.stringify(p.json, null, 2));
  return h("pre", { tabindex: "0" }, `${p.content_type} (base64)\n${p.base64}`);
}

/** One run's page; refreshes while the run is active. */
export async function runPage(root, page, agent, id) {
  document.title = `Run ${id.slice(0, 12)} · ${agent} · gust`;
  const base = `${agentPath(agent)}/runs/${encodeURIComponent(id)}`;
  let message = null;
  let timer = null;
  page.onLeave(() => clearTimeout(timer));

  // One action at a time: a double click on Rerun would queue the run twice.
  const act = oneAtATime(async (label, method, path, done) => {
    try {
      const answer = await api(method, path);
      message = notice("ok", done(answer));
      if (answer && answer.run_id && answer.run_id !== id && label === "Rerun") {
        location.hash = `#/agents/${encodeURIComponent(agent)}/runs/${encodeURIComponent(answer.run_id)}`;
        return;
      }
    } catch (err) {
      message = notice("error", `${label}: ${err.message}`);
    }
    await render();
    // The button pressed may be gone (Cancel, once the run ended), and with it the focus
    // the dialog gave back: the notice says what happened.
    if (document.activeElement === document.body && message && page.alive()) park(message);
  });

  async function render() {
    let run;
    let input = null;
    try {
      [run, input] = await Promise.all([api("GET", base), api("GET", `${base}/input`).catch(() => null)]);
    } catch (err) {
      if (page.alive()) fill(root, notice("error", err.message));
      return;
    }
    if (!page.alive()) return;
    const active = ACTIVE.has(run.status);
    // Drawn again every second while the run is active: the keyboard stays where it was,
    // or goes to what an action answered when it took its button away (Cancel).
    redraw(root, [
      h("div", { class: "page-head" },
        h("div", {},
          h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Agents"), " / ", h("a", { href: `#/agents/${encodeURIComponent(agent)}` }, agent), " / runs"),
          h("h1", {}, "Run ", h("code", {}, id)),
          h("p", {}, statusBadge(run.status), ` version ${run.version} · deployment ${run.deployment} · ${run.attempts} attempt${run.attempts === 1 ? "" : "s"}`)),
        h("div", { class: "head-actions" },
          active ? h("button", { type: "button", class: "danger", id: "cancel-run", onclick: async () => {
            if (await confirmDialog("Cancel run", h("p", {}, "Stop this run? A running guest is interrupted."), "Cancel run", { danger: true })) {
              act("Cancel", "POST", `${base}/cancel`, () => "Cancelled.");
            }
          } }, "Cancel") : null,
          h("button", { type: "button", id: "rerun", onclick: () => act("Rerun", "POST", `${base}/rerun`, (a) => `Queued again as ${a.run_id}.`) }, "Rerun"),
          run.delivery && !active ? h("button", { type: "button", id: "redeliver", onclick: () => act("Redeliver", "POST", `${base}/redeliver`, () => "The push is being delivered again, with the same webhook-id.") }, "Redeliver") : null)),
      message,
      h("section", { class: "card" },
        h("dl", { class: "facts" },
          h("dt", {}, "Created"), h("dd", {}, when(run.created_at)),
          h("dt", {}, "Started"), h("dd", {}, when(run.started_at)),
          h("dt", {}, "Finished"), h("dd", {}, when(run.finished_at)),
          h("dt", {}, "Duration"), h("dd", {}, duration(run.started_at, run.finished_at)),
          h("dt", {}, "Progress"), h("dd", {}, progressCell(run)),
          run.error ? [h("dt", {}, "Error"), h("dd", {}, h("code", {}, run.error.kind), " ", run.error.message)] : null)),
      h("div", { class: "side-by-side" },
        h("section", { class: "card", "aria-labelledby": "input-title" }, h("h2", { id: "input-title" }, "Input"), payload(input && input.input)),
        h("section", { class: "card", "aria-labelledby": "output-title" }, h("h2", { id: "output-title" }, "Output"), payload(run.output))),
      h("section", { class: "card", "aria-labelledby": "logs-title" }, h("h2", { id: "logs-title" }, "Logs"),
        run.logs.length ? h("pre", { class: "logs", tabindex: "0" }, run.logs.map((l) => `${l.ts} ${l.level.padEnd(5)} ${l.message}\n`)) : h("p", { class: "muted" }, "No log lines.")),
      h("section", { class: "card", "aria-labelledby": "outbound-title" }, h("h2", { id: "outbound-title" }, "Outbound calls"),
        run.outbound.length ? h("div", { class: "table-wrap" }, h("table", {},
          h("thead", {}, h("tr", {}, ["Time", "Method", "Host", "Status", "Duration"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, run.outbound.map((o) => h("tr", {},
            h("td", {}, when(o.ts)), h("td", {}, o.method), h("td", {}, o.host),
            h("td", {}, o.status ?? (o.error || "—")), h("td", {}, `${o.duration_ms} ms`)))))) : h("p", { class: "muted" }, "None.")),
      h("section", { class: "card", "aria-labelledby": "delivery-title" }, h("h2", { id: "delivery-title" }, "Delivery"),
        run.delivery ? h("dl", { class: "facts" },
          h("dt", {}, "Status"), h("dd", { id: "delivery-status" }, run.delivery.status),
          h("dt", {}, "Attempts"), h("dd", {}, run.delivery.attempts),
          run.delivery.last_error ? [h("dt", {}, "Last error"), h("dd", {}, run.delivery.last_error)] : null,
          run.delivery.next_attempt_at ? [h("dt", {}, "Next attempt"), h("dd", {}, when(run.delivery.next_attempt_at))] : null)
          : h("p", { class: "muted" }, "This run is not pushed (its deployment is in Sync mode).")),
    ], () => message || root.querySelector("h1"));
    clearTimeout(timer);
    if (active) timer = setTimeout(render, 1000);
  }
  await render();
}
