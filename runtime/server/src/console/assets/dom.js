// Small helpers for building the page without inline HTML: every text goes in as a text
// node, so nothing an agent, a run or a user typed can become markup.

/** An element: `h("a", {href: "#/"}, "text", child)`. `on*` attributes become listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const FOCUSABLE = "a[href], button, input, select, textarea, summary, [tabindex]";

/**
 * What names a focusable element across two drawings of the same part: its tag, link, name
 * and value (two radios differ only there), data attributes, the section it is in, and for
 * short controls their text. Not its id, which some widgets make up anew each time; and not
 * the text of a long block (a run's logs grow).
 */
function signature(el) {
  const data = Object.entries(el.dataset).map(([k, v]) => `${k}=${v}`).join(",");
  const short = ["A", "BUTTON", "SUMMARY", "LABEL"].includes(el.tagName);
  const section = el.closest("[aria-labelledby]");
  return [el.tagName, el.getAttribute("href"), el.getAttribute("name"), el.getAttribute("value"),
    el.getAttribute("aria-label"), data, section ? section.getAttribute("aria-labelledby") : "",
    short ? el.textContent.trim() : ""].join("|");
}

/**
 * `fill`, for a part drawn again while the user may be on it (a refresh every few seconds,
 * the page after an action): the keyboard stays where it was. The element that had focus
 * is found again in the new drawing (the same signature, nearest in tab order); when it is
 * gone (the button of a key just revoked), focus goes to `fallback()`, so that it never
 * drops to the page's top; it stays there, without scrolling to it again, through the
 * drawings after. Focus outside `el` is left alone.
 */
export function redraw(el, children, fallback = () => null) {
  const active = document.activeElement;
  if (!active || active === el || !el.contains(active)) return fill(el, children);
  // Focus put on a fallback by an earlier drawing: its new copy takes it, quietly.
  const parked = active.hasAttribute("data-parked");
  const index = [...el.querySelectorAll(FOCUSABLE)].indexOf(active);
  const wanted = signature(active);
  fill(el, children);
  let best = null;
  [...el.querySelectorAll(FOCUSABLE)].forEach((candidate, i) => {
    if (signature(candidate) !== wanted) return;
    if (!best || Math.abs(i - index) < Math.abs(best.i - index)) best = { el: candidate, i };
  });
  if (best) best.el.focus({ preventScroll: true });
  else {
    const target = fallback();
    if (target) park(target, { scroll: !parked });
  }
  return el;
}

/**
 * Gives the keyboard to `target` where the control it was on went away (a notice that says
 * what an action did, a heading). It is marked, so that `redraw` keeps it there in later
 * drawings without scrolling to it again.
 */
export function park(target, { scroll = true } = {}) {
  // A notice or a heading is not a control: it takes focus from a script only.
  if (!target.matches(FOCUSABLE)) target.setAttribute("tabindex", "-1");
  target.setAttribute("data-parked", "");
  target.focus({ preventScroll: !scroll });
}

/**
 * A modal dialog (the native `<dialog>`: focus moves into it, Escape closes it, focus goes
 * back where it was). `build(close)` returns its content; resolves with what `close` got.
 */
export function dialog(title, build, { wide = false, keep = false } = {}) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const id = `dialog-${Math.random().toString(36).slice(2)}`;
    // `keep`: it shows something shown only once, and stays when the session ends.
    const box = h("dialog", { class: wide ? "wide" : undefined, "aria-labelledby": id, "data-keep": keep });
    let result;
    const close = (value) => {
      result = value;
      box.close();
    };
    box.addEventListener("close", () => {
      box.remove();
      if (opener && opener.focus) opener.focus();
      resolve(result);
    });
    box.append(
      h("div", { class: "dialog-head" },
        h("h2", { id }, title),
        h("button", { type: "button", class: "icon", "aria-label": "Close", onclick: () => close(undefined) }, "×")),
      build(close),
    );
    document.body.append(box);
    box.showModal();
    const first = box.querySelector("[autofocus], input, select, textarea, .primary");
    if (first) first.focus();
  });
}

/**
 * `action`, one call at a time: a call while one is under way does nothing. A double click
 * on a button that makes something (a deployment, a key, a run) would otherwise make two.
 */
export function oneAtATime(action) {
  let busy = false;
  return async (...args) => {
    if (busy) return undefined;
    busy = true;
    try {
      return await action(...args);
    } finally {
      busy = false;
    }
  };
}

/** Asks before doing something that cannot be undone; resolves true when confirmed. */
export function confirmDialog(title, body, action = "Confirm", { danger = false } = {}) {
  // What cannot be undone starts on Cancel, so Enter alone does not do it.
  return dialog(title, (close) =>
    h("div", {},
      h("div", { class: "dialog-body" }, body),
      h("div", { class: "actions" },
        h("button", { type: "button", autofocus: danger, onclick: () => close(false) }, "Cancel"),
        h("button", { type: "button", class: danger ? "primary danger" : "primary", onclick: () => close(true) }, action))),
  ).then(Boolean);
}

/** Copies `text`; says so on the button for a moment. */
export function copyButton(text, label = "Copy") {
  const button = h("button", { type: "button", class: "copy" }, label);
  button.addEventListener("click", async () => {
    const value = typeof text === "function" ? text() : text;
    let done = false;
    try {
      await navigator.clipboard.writeText(value);
      done = true;
    } catch {
      // Clipboard access needs a secure context (https or localhost); fall back to a
      // selection. It goes beside the button: with a dialog open, the rest of the page is
      // inert, and a selection there would copy nothing while saying it did. "Copied" only
      // when the text really was selected.
      const area = h("textarea", { class: "offscreen", "aria-hidden": "true" });
      area.value = value;
      button.after(area);
      area.focus();
      area.select();
      const selected = document.activeElement === area && area.selectionEnd - area.selectionStart === value.length;
      done = selected && document.execCommand("copy");
      area.remove();
      button.focus();
    }
    button.textContent = done ? "Copied" : "Select and copy";
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

/** A status line for errors and confirmations, read out by screen readers. */
export function notice(kind, ...text) {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, ...text);
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function bytes(n) {
  if (n === undefined || n === null) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function duration(startIso, endIso) {
  if (!startIso) return "—";
  const ms = (endIso ? new Date(endIso) : new Date()) - new Date(startIso);
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** Tabs with a tablist the arrow keys move through (WAI-ARIA tabs pattern). */
export function tabs(label, panes) {
  const list = h("div", { role: "tablist", "aria-label": label, class: "tabs" });
  const panels = [];
  const buttons = panes.map((pane, i) => {
    const id = `tab-${Math.random().toString(36).slice(2)}`;
    const panel = h("div", { role: "tabpanel", id: `${id}-panel`, "aria-labelledby": id, hidden: i !== 0 }, pane.content);
    panels.push(panel);
    return h("button", {
      type: "button", role: "tab", id, "aria-controls": `${id}-panel`,
      "aria-selected": i === 0 ? "true" : "false", tabindex: i === 0 ? "0" : "-1",
      "data-tab": pane.key,
    }, pane.title);
  });
  const select = (i) => {
    buttons.forEach((b, j) => {
      b.setAttribute("aria-selected", i === j ? "true" : "false");
      b.tabIndex = i === j ? 0 : -1;
      panels[j].hidden = i !== j;
    });
    buttons[i].focus();
  };
  buttons.forEach((b, i) => {
    b.addEventListener("click", () => select(i));
    b.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight") select((i + 1) % buttons.length);
      if (e.key === "ArrowLeft") select((i + buttons.length - 1) % buttons.length);
    });
  });
  list.append(...buttons);
  return h("div", { class: "tabbed" }, list, panels);
}
