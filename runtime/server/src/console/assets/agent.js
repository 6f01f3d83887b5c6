// The Agent endpoint page: deploy (with a Confirm dialog that shows what changes), the mode
// and its Configure dialog, the endpoints with code to copy, uploads, the deployed version
// read-only beside the draft, the deployment history with rollback, runs and keys.

import { api, agentPath, editDraft, upload } from "./api.js";
import { h, fill, redraw, dialog, confirmDialog, copyButton, notice, when, bytes, tabs, oneAtATime } from "./dom.js";
import { runsSection } from "./runs.js";

const LANGS = [["curl", "curl"], ["python", "Python"], ["node", "Node.js"]];

export async function agentPage(root, page, agent) {
  document.title = `${agent} · gust`;
  const state = { refused: null, message: null };
  let stopRuns = () => {};
  page.onLeave(() => stopRuns());
  // Renders may overlap (an action's, and the one before it): only the newest draws.
  let latest = 0;

  const render = async () => {
    const mine = ++latest;
    const current = () => mine === latest && page.alive();
    let record = null;
    try {
      // A new agent exists once its first version is uploaded: ask the list first rather
      // than provoke a 404.
      const { agents } = await api("GET", "/v1/agents");
      if (agents.some((a) => a.agent === agent)) record = await api("GET", agentPath(agent));
    } catch (err) {
      if (current()) fill(root, notice("error", err.message));
      return;
    }
    // The page is drawn without a part that could not be read, and says so: an empty keys
    // table or a missing banner must not pass for the real state.
    const missing = [];
    const part = (what, promise) => promise.catch((err) => {
      missing.push(`${what} (${err.message})`);
      return null;
    });
    const [endpoints, preview, wit, keys] = await Promise.all([
      record && record.live ? part("the endpoints", api("GET", `${agentPath(agent)}/endpoints`)) : null,
      record && record.versions.length ? part("what a deploy would change", api("GET", `${agentPath(agent)}/deploy/preview`)) : null,
      record && record.live ? part("the live version", api("GET", `${agentPath(agent)}/versions/${record.live.version}`)) : null,
      record ? part("the keys", api("GET", `${agentPath(agent)}/keys`).then((k) => k.keys)) : [],
    ]);
    if (!current()) return;
    stopRuns();
    const runs = h("section", { "aria-labelledby": "runs-title" });
    // The whole page is drawn again: the keyboard stays where it was, or, when an action
    // took its button away (a rollback, a revoke), goes to what the action answered.
    redraw(root, [
      head(agent, record, preview, state, render),
      missing.length ? notice("error", `Part of this page could not be read: ${missing.join("; ")}. Reload to try again.`) : null,
      state.message,
      banner(record, preview, state, agent, render),
      record ? modeSection(agent, record, render, state) : null,
      endpointsSection(agent, record, endpoints, render),
      uploadSection(agent, state, render),
      record && record.versions.length ? versionsSection(agent, record, wit) : null,
      record && record.deployments.length ? historySection(agent, record, render, state) : null,
      record && record.live ? runs : null,
      record && keys ? keysSection(agent, keys, render, state) : null,
    ], () => state.message || root.querySelector("h1"));
    if (record && record.live) stopRuns = runsSection(runs, agent);
  };
  await render();
}

function head(agent, record, preview, state, render) {
  const live = record && record.live;
  const canDeploy = record && record.versions.length > 0 && !state.refused;
  return h("div", { class: "page-head" },
    h("div", {},
      h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Agents"), " / "),
      h("h1", {}, agent, " ", h("span", { class: "subtitle" }, "Agent endpoint")),
      h("p", { class: "muted", id: "live-status" }, live
        ? [`Live: version ${live.version} · deployment ${live.deployment} · deployed ${when(live.deployed_at)}`]
        : "Not deployed yet.")),
    h("div", { class: "head-actions" },
      h("button", {
        type: "button", class: "primary", id: "deploy", disabled: !canDeploy,
        title: canDeploy ? undefined : state.refused ? "The last upload was refused: upload a component that passes the check" : "Upload a version first",
        onclick: () => deployFlow(agent, state, render),
      }, "Deploy")));
}

/**
 * The Confirm dialog: exactly what the deploy changes, from the API's preview. One at a
 * time, whether from the head's button or the banner's.
 */
const deployFlow = oneAtATime(async (agent, state, render) => {
  let preview;
  try {
    preview = await api("GET", `${agentPath(agent)}/deploy/preview`);
  } catch (err) {
    state.message = notice("error", err.message);
    return render();
  }
  const live = preview.live;
  const confirmed = await confirmDialog("Confirm deploy",
    h("div", {},
      h("p", {}, live
        ? `Deployment ${live.deployment} (version ${live.version}) is live. This deploy makes a new deployment:`
        : "This agent is not deployed yet. This deploy makes it live:"),
      h("dl", { class: "facts" },
        h("dt", {}, "Version"), h("dd", {}, live && live.version !== preview.version.version
          ? `${live.version} → ${preview.version.version}` : `${preview.version.version}${live ? " (unchanged)" : ""}`),
        h("dt", {}, "Mode"), h("dd", {}, preview.config.mode === "async" ? "Async" : "Sync"),
        h("dt", {}, "Endpoint"), h("dd", {}, h("code", {}, preview.endpoints.sync), " (unchanged by any deploy)")),
      changesTable(live ? preview.changes : []),
      live && !preview.changes_anything ? h("p", { class: "muted" }, "Nothing changes: the same version and configuration are deployed again.") : null),
    "Deploy");
  if (!confirmed) return;
  try {
    // If-Match: the configuration the dialog showed goes live, or nothing does.
    const deployed = await api("POST", `${agentPath(agent)}/deploy`, { version: preview.version.version },
      { "If-Match": preview.draft_etag });
    state.message = notice("ok", `Deployed: deployment ${deployed.deployment} (version ${deployed.version}) is live.`);
  } catch (err) {
    state.message = notice("error", err.status === 412
      ? "Nothing was deployed: the configuration changed while the Confirm dialog was open. Review the changes and deploy again."
      : `Deploy refused: ${err.message}`);
  }
  await render();
});

function changesTable(changes) {
  if (!changes.length) return null;
  // A side without the field reads "—", a secret one "••••" (a key not live yet is not a
  // hidden value).
  const show = (v, secret, token = false) => (v === null || v === undefined ? "—"
    : secret ? (token ? "•••• (new token)" : "••••")
    : typeof v === "string" ? v : JSON.stringify(v));
  return h("table", { class: "changes" },
    h("caption", {}, "Configuration changes"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Setting"), h("th", { scope: "col" }, "Live"), h("th", { scope: "col" }, "After deploy"))),
    h("tbody", {}, changes.map((c) => h("tr", {},
      h("th", { scope: "row" }, h("code", {}, c.field)),
      h("td", {}, show(c.from, c.secret)),
      h("td", {}, show(c.to, c.secret, c.field === "push.access_token"))))));
}

/** While the draft differs from what is live: a redeploy is needed, and what differs. */
function banner(record, preview, state, agent, render) {
  if (!record || !record.live || !preview || !preview.changes_anything) return null;
  const newer = preview.version.version !== record.live.version;
  return h("div", { class: "banner", role: "status", id: "redeploy-banner" },
    h("p", {}, h("strong", {}, "Redeploy needed. "),
      newer ? `Version ${preview.version.version} is not live yet. ` : "",
      preview.changes.length ? `The draft differs from the live deployment in: ${preview.changes.map((c) => c.field).join(", ")}. ` : "",
      "Changes take effect at the next deploy."),
    // As the head's Deploy: not while the last upload was refused.
    h("button", {
      type: "button", disabled: !!state.refused,
      title: state.refused ? "The last upload was refused: upload a component that passes the check" : undefined,
      onclick: () => deployFlow(agent, state, render),
    }, "Deploy now"));
}

function modeSection(agent, record, render, state) {
  const draft = record.draft;
  const live = record.live ? record.live.config.mode : null;
  const radio = (value, label, hint) => h("label", { class: "choice" },
    h("input", { type: "radio", name: "mode", id: `mode-${value}`, value, checked: draft.mode === value, onchange: () => setMode(value) }),
    h("span", {}, h("strong", {}, label), h("span", { class: "muted" }, hint)));
  const setMode = async (mode) => {
    if (mode === "async" && !draft.push) {
      // Async needs somewhere to push: the dialog saves mode and target together (and on
      // Cancel the page shows the draft unchanged).
      await configure(agent, draft, state);
      return render();
    }
    try {
      await editDraft(agent, (now) => ({ ...now, mode }));
      state.message = notice("ok", `Mode set to ${mode === "async" ? "Async" : "Sync"} in the draft: deploy to make it live.`);
    } catch (err) {
      state.message = notice("error", err.message);
    }
    await render();
  };
  return h("section", { "aria-labelledby": "mode-title", class: "card" },
    h("h2", { id: "mode-title" }, "Mode"),
    h("fieldset", { class: "choices" },
      h("legend", { class: "visually-hidden" }, "How results reach you"),
      radio("sync", "Sync", "The call answers with the agent's output."),
      radio("async", "Async", "Runs are queued; each result is pushed to your application and can be polled.")),
    draft.push ? h("dl", { class: "facts" },
      h("dt", {}, "Application URL"), h("dd", {}, h("code", { id: "push-url" }, draft.push.url)),
      h("dt", {}, "Access token"), h("dd", {}, "•••• (write-only)")) : null,
    h("div", { class: "actions left" },
      h("button", { type: "button", id: "configure", disabled: draft.mode !== "async", onclick: async () => { await configure(agent, draft, state); render(); } }, "Configure"),
      live ? h("span", { class: "muted" }, `Live mode: ${live === "async" ? "Async" : "Sync"}`) : null));
}

/** The Configure asynchronous mode dialog; resolves true when saved. */
async function configure(agent, draft, state) {
  let saving = null;
  const url = h("input", { id: "push-url-input", name: "url", type: "url", required: true, placeholder: "https://your-app.example/gust-results", value: draft.push ? draft.push.url : "" });
  const token = h("input", { id: "push-token-input", name: "access_token", type: "password", autocomplete: "off", required: !draft.push, placeholder: draft.push ? "unchanged" : "" });
  const error = h("div", { "aria-live": "assertive" });
  let saved = await dialog("Configure asynchronous mode", (close) => {
    const form = h("form", {},
      h("p", { class: "muted" }, "Results of queued runs are sent to your application with ", h("code", {}, "Authorization: Bearer <access token>"), " and a Standard Webhooks signature."),
      h("label", { for: "push-url-input" }, "Application URL"), url,
      h("label", { for: "push-token-input" }, "Access token"), token,
      draft.push ? h("p", { class: "hint" }, "Leave the token empty to keep the stored one (only for the same URL).") : null,
      error,
      h("div", { class: "actions" },
        h("button", { type: "button", onclick: () => close(null) }, "Cancel"),
        h("button", { type: "submit", class: "primary" }, "Save")));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (saving) return;
      if (token.value && !token.value.trim()) {
        fill(error, notice("error", "The access token is only spaces: type the token your application expects."));
        return;
      }
      const push = { url: url.value.trim(), access_token: token.value || "***" };
      saving = editDraft(agent, (now) => ({ ...now, mode: "async", push }));
      try {
        close(await saving);
      } catch (err) {
        fill(error, notice("error", err.message));
      } finally {
        saving = null;
      }
    });
    return form;
  });
  // Closed (Escape, ×, Cancel) while a save was on its way: the save goes on, and what it
  // answers (a signing secret shown only this once) must still be shown.
  if (!saved && saving) saved = await saving.catch(() => null);
  if (!saved) return false;
  state.message = notice("ok", "Async mode saved in the draft: deploy to make it live.");
  if (saved.push && saved.push.secret && saved.push.secret !== "***") {
    await dialog("Signing secret", () => h("div", {},
      h("p", {}, "Your application verifies each push with this secret (Standard Webhooks: the ",
        h("code", {}, "webhook-id"), ", ", h("code", {}, "webhook-timestamp"), " and ", h("code", {}, "webhook-signature"), " headers). ",
        h("strong", {}, "It is shown this once.")),
      h("pre", { class: "secret", id: "signing-secret" }, saved.push.secret),
      h("div", { class: "actions" }, copyButton(saved.push.secret, "Copy secret"))), { keep: true });
  }
  return true;
}

/**
 * Shows a new key, which is shown only this once, in the place `id` of the page as drawn
 * now; or in a dialog when that part is not on the page (it could not be read again), so
 * that the key never goes to a node nobody sees.
 */
function showOnce(id, ...content) {
  const place = document.getElementById(id);
  if (place) return fill(place, ...content);
  return dialog("New key", () => h("div", {}, ...content), { keep: true });
}

function endpointsSection(agent, record, endpoints, render) {
  if (!record || !record.live || !endpoints) return null;
  const keyHelp = h("div", { class: "key-help", id: "key-help", "aria-live": "polite" },
    h("p", { class: "muted" }, "The code reads your key from ", h("code", {}, "GUST_API_KEY"), ". "),
    h("button", { type: "button", id: "snippet-key", onclick: oneAtATime(async () => {
      try {
        const made = await api("POST", `${agentPath(agent)}/keys`, { name: `console ${new Date().toISOString().slice(0, 16)}` });
        const line = `export GUST_API_KEY=${made.key}`;
        // Drawn again so that the Keys section lists the new key; the line goes in the
        // new drawing.
        await render();
        await showOnce("key-help", h("p", {}, "A key for ", h("code", {}, agent), " — shown this once:"),
          h("pre", { class: "secret", id: "new-key-line" }, line), copyButton(line));
      } catch (err) {
        fill(keyHelp, notice("error", err.message));
      }
    }) }, "Create a key for this code"));
  return h("section", { "aria-labelledby": "endpoints-title", class: "card" },
    h("h2", { id: "endpoints-title" }, "Endpoints"),
    keyHelp,
    endpoints.endpoints.map((e) => h("article", { class: "endpoint", "data-endpoint": e.name },
      h("h3", {}, e.title),
      h("p", {}, h("span", { class: "method" }, e.method), " ", h("code", { class: "url" }, e.url), " ", copyButton(e.url, "Copy URL")),
      h("p", { class: "muted" }, e.description),
      tabs(`${e.title} code`, LANGS.map(([key, title]) => ({
        key, title,
        content: h("div", { class: "snippet" },
          h("pre", { tabindex: "0", "data-lang": key }, h("code", {}, e.snippets[key])),
          copyButton(e.snippets[key])),
      }))))));
}

function uploadSection(agent, state, render) {
  // Reached through its label (a focusable button look-alike), not as a second tab stop.
  const input = h("input", { type: "file", id: "upload-file", accept: ".wasm,application/wasm", class: "visually-hidden", tabindex: "-1" });
  const progress = h("progress", { max: "1", value: "0", hidden: true, "aria-label": "Upload progress" });
  const result = h("div", { "aria-live": "polite", id: "upload-result" }, state.refused);
  const send = async (file) => {
    if (!file) return;
    progress.hidden = false;
    progress.value = 0;
    fill(result, h("p", { class: "muted" }, `Uploading ${file.name} (${bytes(file.size)})…`));
    try {
      const version = await upload(agent, file, (f) => { progress.value = f; });
      state.refused = null;
      state.message = notice("ok", `Version ${version.version} passed the check (${bytes(version.size)}). Deploy to make it live.`);
      await render();
    } catch (err) {
      progress.hidden = true;
      state.refused = h("div", { class: "diagnostics", role: "alert" },
        h("p", {}, h("strong", {}, "Refused: "), err.message),
        err.diagnostics.length ? h("ul", {}, err.diagnostics.map((d) => h("li", {},
          h("code", { class: "badge error" }, d.code), " ",
          d.item ? [h("code", {}, d.item), ": "] : null, d.message))) : null);
      await render();
    }
  };
  input.addEventListener("change", () => send(input.files[0]));
  const zone = h("div", { class: "dropzone", id: "dropzone" },
    h("p", {}, "Drop a component (", h("code", {}, ".wasm"), ") here, or "),
    h("label", { for: "upload-file", class: "button", tabindex: "0", id: "choose-file" }, "Choose a file"),
    input);
  zone.querySelector("label").addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    send(e.dataTransfer.files[0]);
  });
  return h("section", { "aria-labelledby": "upload-title", class: "card" },
    h("h2", { id: "upload-title" }, "Upload a new version"),
    h("p", { class: "muted" }, "Each upload is checked against the agent world; a refused component changes nothing."),
    zone, progress, result);
}

/** The deployed version, read-only, beside the draft that the next deploy would freeze. */
function versionsSection(agent, record, wit) {
  const newest = record.versions[record.versions.length - 1];
  const live = record.live;
  const deployed = live ? h("article", { class: "card readonly", id: "deployed-version", "aria-labelledby": "deployed-title" },
    h("h3", { id: "deployed-title" }, `Deployed version ${live.version}`, h("span", { class: "badge" }, "read-only")),
    h("dl", { class: "facts" },
      h("dt", {}, "Deployment"), h("dd", {}, live.deployment),
      h("dt", {}, "Digest"), h("dd", {}, h("code", { class: "digest" }, live.digest)),
      h("dt", {}, "Size"), h("dd", {}, bytes((record.versions.find((v) => v.version === live.version) || {}).size)),
      h("dt", {}, "Deployed"), h("dd", {}, when(live.deployed_at))),
    configView(live.config, "Configuration (frozen)", true, "live"),
    wit ? h("details", {}, h("summary", {}, "WIT world"), h("pre", { class: "wit", tabindex: "0" }, wit.wit)) : null) : null;
  const draft = h("article", { class: "card", id: "draft-version", "aria-labelledby": "draft-title" },
    h("h3", { id: "draft-title" }, "Draft", record.draft_pending || (live && newest.version !== live.version) ? h("span", { class: "badge warn" }, "not deployed") : h("span", { class: "badge" }, "same as live")),
    h("dl", { class: "facts" },
      h("dt", {}, "Newest version"), h("dd", {}, `${newest.version} (uploaded ${when(newest.created_at)})`),
      h("dt", {}, "Digest"), h("dd", {}, h("code", { class: "digest" }, newest.digest))),
    configView(record.draft, "Configuration (draft)", !live, "draft"));
  return h("section", { "aria-labelledby": "versions-title" },
    h("h2", { id: "versions-title" }, "Versions"),
    h("div", { class: "side-by-side" }, deployed, draft));
}

/**
 * A configuration as JSON, the values of its `config` keys hidden until asked for: they are
 * often API keys, and the Confirm dialog hides them as well.
 */
function configView(config, summary, open, which) {
  const keys = Object.keys(config.config || {});
  const masked = { ...config, config: Object.fromEntries(keys.map((k) => [k, "••••"])) };
  const pre = h("pre", { tabindex: "0", "data-config": which }, JSON.stringify(masked, null, 2));
  const toggle = h("button", { type: "button", class: "small", "aria-pressed": "false", "data-reveal": which, onclick: () => {
    const shown = toggle.getAttribute("aria-pressed") !== "true";
    pre.textContent = JSON.stringify(shown ? config : masked, null, 2);
    // A toggle button keeps its name; aria-pressed says which way it is.
    toggle.setAttribute("aria-pressed", String(shown));
  } }, "Show values");
  return h("details", { open }, h("summary", {}, summary), keys.length ? h("div", { class: "actions left" }, toggle) : null, pre);
}

function historySection(agent, record, render, state) {
  const rows = [...record.deployments].reverse();
  return h("section", { "aria-labelledby": "history-title", class: "card" },
    h("h2", { id: "history-title" }, "Deployment history"),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["Deployment", "Version", "Mode", "Deployed", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((d) => h("tr", { class: d.live ? "live" : undefined },
        h("th", { scope: "row" }, `${d.deployment}`, d.live ? h("span", { class: "badge ok" }, "live") : null),
        h("td", {}, d.version),
        h("td", {}, d.config.mode === "async" ? "Async" : "Sync"),
        h("td", {}, when(d.deployed_at)),
        h("td", {}, d.live ? null : h("button", {
          type: "button", class: "small", "data-rollback": d.deployment, id: `rollback-${d.deployment}`,
          onclick: async () => {
            const ok = await confirmDialog("Confirm rollback",
              h("p", {}, `Make deployment ${d.deployment} live again: version ${d.version}, ${d.config.mode === "async" ? "Async" : "Sync"} mode, with the configuration frozen then. The endpoint stays the same.`),
              `Roll back to deployment ${d.deployment}`);
            if (!ok) return;
            try {
              const back = await api("POST", `${agentPath(agent)}/rollback`, { to: d.deployment });
              state.message = notice("ok", `Rolled back: deployment ${back.deployment} (version ${back.version}) is live.`);
            } catch (err) {
              state.message = notice("error", err.message);
            }
            render();
          },
        }, "Roll back to this"))))))));
}

function keysSection(agent, keys, render, state) {
  // The server takes names of up to 128 characters.
  const name = h("input", { id: "key-name", name: "name", required: true, maxlength: "128", placeholder: "my-app" });
  const shown = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "inline" },
    h("label", { for: "key-name" }, "Key name"), name, h("button", { type: "submit" }, "Create key"));
  // One key per press: a double click would make a second key whose secret nobody sees.
  const create = oneAtATime(async () => {
    try {
      const made = await api("POST", `${agentPath(agent)}/keys`, { name: name.value.trim() });
      await render();
      await showOnce("key-shown", h("p", {}, `Key “${made.name}” — shown this once:`), h("pre", { class: "secret", id: "created-key" }, made.key), copyButton(made.key));
    } catch (err) {
      fill(shown, notice("error", err.message));
    }
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    create();
  });
  shown.id = "key-shown";
  return h("section", { "aria-labelledby": "keys-title", class: "card" },
    h("h2", { id: "keys-title" }, "Keys"),
    h("p", { class: "muted" }, "An invoke key calls this agent only (sync calls and runs)."),
    form, shown,
    keys.length ? h("div", { class: "table-wrap" }, h("table", { id: "keys-table" },
      h("thead", {}, h("tr", {}, ["Name", "Id", "Created", "Last used", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, keys.map((k) => h("tr", {},
        h("th", { scope: "row" }, k.name),
        h("td", {}, h("code", {}, k.id)),
        h("td", {}, when(k.created_at)),
        h("td", {}, k.last_used_at ? when(k.last_used_at) : "never"),
        h("td", {}, h("button", { type: "button", class: "small danger", "data-revoke": k.id, id: `revoke-${k.id}`, onclick: async () => {
          const ok = await confirmDialog("Revoke key", h("p", {}, `Calls with “${k.name}” are refused from now on.`), "Revoke", { danger: true });
          if (!ok) return;
          try {
            await api("DELETE", `${agentPath(agent)}/keys/${encodeURIComponent(k.id)}`);
            state.message = notice("ok", `Key “${k.name}” revoked.`);
          } catch (err) {
            state.message = notice("error", err.message);
          }
          render();
        } }, "Revoke"))))))) : h("p", { class: "muted" }, "No keys yet."));
}
