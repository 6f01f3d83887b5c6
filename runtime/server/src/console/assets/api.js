// The console speaks only the public API (`/v1`), authorised by its session cookie; the
// browser adds the Origin header the host checks on every change.

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the host answered ${status}`);
    this.status = status;
    this.kind = error.kind;
    this.diagnostics = error.diagnostics || [];
  }
}

/** Called when the session has ended, so the page can ask to sign in again. */
let onSignedOut = () => {};
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

export async function api(method, path, body, headers = {}) {
  return (await exchange(method, path, body, headers)).parsed;
}

/** Like `api`, and the answer's headers beside what it says. */
async function exchange(method, path, body, headers = {}) {
  const init = { method, credentials: "same-origin", headers: { ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  if (!response.ok) {
    if (response.status === 401 && !path.startsWith("/console/session")) onSignedOut();
    throw new ApiError(response.status, parsed);
  }
  return { parsed, headers: response.headers };
}

export const agentPath = (agent) => `/v1/agents/${encodeURIComponent(agent)}`;

/**
 * Changes the agent's draft with `change(draft)`, made on the draft as it is now rather than
 * as this page showed it: the draft is read, changed and written back with its ETag in
 * If-Match, and read again if someone else (another tab, `gust config`) wrote in between,
 * so their change is kept. Resolves to the saved draft.
 */
export async function editDraft(agent, change) {
  const path = `${agentPath(agent)}/config`;
  for (let attempt = 1; ; attempt++) {
    const read = await exchange("GET", path);
    // A proxy that compresses answers marks the tag weak (W/), which never matches a write;
    // the tag itself still names the draft.
    const tag = (read.headers.get("ETag") || "").replace(/^W\//, "");
    try {
      return await api("PUT", path, change(read.parsed), tag ? { "If-Match": tag } : {});
    } catch (err) {
      if (err.status !== 412 || attempt >= 5) throw err;
    }
  }
}

/** Uploads a component with progress (fetch reports no upload progress; XHR does). */
export function upload(agent, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${agentPath(agent)}/versions`);
    xhr.withCredentials = true;
    xhr.setRequestHeader("Content-Type", "application/wasm");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        if (xhr.status === 401) onSignedOut();
        reject(new ApiError(xhr.status, body));
      }
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, { error: { message: "the upload did not reach the host" } })));
    xhr.send(file);
  });
}
