// Write gust agents in JavaScript.
//
// An agent is one function from a JSON input to a JSON output. Wrap it with `agent` and
// export it as `run`:
//
//   import { agent, InvalidInput } from './sdk/gust.js';
//
//   export const run = agent(async (input, ctx) => {
//     if (!input?.question) throw new InvalidInput('`question` is missing'); // HTTP 422
//     ctx.info(`answering ${input.question}`);            // host log, tagged with the run id
//     const tone = ctx.config('TONE', 'plain');           // per-deployment configuration
//     return { answer: `(${tone}) you asked: ${input.question}` };
//   });
//
// - The input is the request body parsed as JSON (an empty body is `null`); a body that is
//   not JSON is answered as `invalid_input` before your function runs.
// - What the function returns (or its promise resolves to) is sent as JSON.
// - `throw new InvalidInput(message)` answers HTTP 422, `throw new Failed(message)` HTTP 502;
//   anything else thrown becomes a `failed` error with its message and stack.
// - HTTP: use `fetch` (from this module for clearer errors, or the global one). Only hosts
//   in the deployment's `allowed_hosts` are reachable.
// - Every call runs on a fresh instance: module-level state does not carry between calls.
// - Streamed output: `ctx.emit(chunk)` sends a chunk (a string or bytes) at once, and a
//   generator function (async or not) has each value it yields emitted:
//
//     export const run = agent(async function* (input, ctx) {
//       for await (const token of chat(input.question)) yield token;
//     });
//
//   Callers that stream the call get each chunk as it is emitted; the output (what a plain
//   call answers, what a poll shows) is the chunks followed by what the function returns.
//   Returning nothing after emitting answers the chunks alone, as `text/plain;
//   charset=utf-8`; returning a value answers the chunks then its JSON.
//
// The component is built with componentize-js against the agent world (`wit/`); `gust build`
// runs it for you.

import {
  config as hostConfig,
  emit as hostEmit,
  log as hostLog,
  progress as hostProgress,
} from 'gust:agent/host@0.1.1';

// The host keeps the first 4 KiB of an error message; of a long stack, the top matters most
// for JavaScript (the throwing frame comes first), so the SDK cuts the end.
const MAX_ERROR_CHARS = 4000;
const LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error']);
// What a function that emitted its output and returns nothing answers.
const TEXT = 'text/plain; charset=utf-8';

/** The caller's input is not acceptable: answered as HTTP 422 `invalid_input`. */
export class InvalidInput extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvalidInput';
  }
}

/** The flow could not finish (a model or tool failed): answered as HTTP 502 `failed`. */
export class Failed extends Error {
  constructor(message) {
    super(message);
    this.name = 'Failed';
  }
}

/** A request that got no answer. */
export class HttpError extends Error {
  constructor(message) {
    super(message);
    this.name = 'HttpError';
  }
}

/** What the host tells a run about itself, and the host functions it may call. */
// The contexts that emitted a chunk: a run that streamed and returns nothing answers its
// chunks alone.
const emitted = new WeakSet();

export class Context {
  #request;

  constructor(request) {
    this.#request = request;
  }

  /** The agent's name, as in the endpoint URL. */
  get agent() {
    return this.#request.agent;
  }

  /** The version number of the component that is running. */
  get version() {
    return this.#request.version;
  }

  /** The run id, also in the caller's `gust-run-id` header and on every log line. */
  get runId() {
    return this.#request.runId;
  }

  /** `"sync"` for an inline call, `"async"` for a queued run. */
  get mode() {
    return this.#request.mode;
  }

  /** 1 on the first attempt; higher when a queued run is executed again. */
  get attempt() {
    return this.#request.attempt;
  }

  /** The caller's `Content-Type`. */
  get contentType() {
    return this.#request.contentType;
  }

  /** When the host cuts this invocation off (a `Date`), or `null` when nothing does. */
  get deadline() {
    const ms = this.#request.deadlineMs;
    return ms === undefined || ms === null ? null : new Date(Number(ms));
  }

  /** A value of the deployment's `config` map, or `fallback` when it is not set. */
  config(key, fallback = undefined) {
    const value = hostConfig(key);
    return value === undefined || value === null ? fallback : value;
  }

  /** Logs a line: `level` is trace, debug, info, warn or error. */
  log(level, message) {
    const lowered = String(level).toLowerCase();
    if (!LEVELS.has(lowered)) {
      throw new TypeError(`unknown log level ${level}; use one of ${[...LEVELS].join(', ')}`);
    }
    hostLog(lowered, String(message));
  }

  debug(message) {
    hostLog('debug', String(message));
  }

  info(message) {
    hostLog('info', String(message));
  }

  warn(message) {
    hostLog('warn', String(message));
  }

  error(message) {
    hostLog('error', String(message));
  }

  /** Reports how far a queued run has come (0 to 1); pollers see it. */
  progress(fraction, message = '') {
    hostProgress(Number(fraction), String(message));
  }

  /**
   * Sends the next chunk of the output now: a string (as UTF-8) or bytes (a `Uint8Array`,
   * another typed array or an `ArrayBuffer`). Callers that stream the call, and followers of
   * a queued run, get it at once; the output is every chunk followed by what the function
   * returns. Past the deployment's output limit the run ends here (`output_too_large`). An
   * empty chunk sends nothing.
   */
  emit(chunk) {
    let bytes;
    if (typeof chunk === 'string') {
      bytes = new TextEncoder().encode(chunk);
    } else if (chunk instanceof Uint8Array) {
      bytes = chunk;
    } else if (ArrayBuffer.isView(chunk)) {
      bytes = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    } else if (chunk instanceof ArrayBuffer) {
      bytes = new Uint8Array(chunk);
    } else {
      throw new TypeError(`emit takes a string or bytes, not ${safeString(chunk)}`);
    }
    if (bytes.length === 0) return;
    emitted.add(this);
    hostEmit(bytes);
  }
}

/**
 * `fetch`, with a clearer error when a request gets no answer. The engine reports every
 * such failure as the same `TypeError`; the reason (a destination the deployment does not
 * allow, a timeout, a refused connection) is in the run's outbound record.
 */
export async function fetch(resource, init = undefined) {
  try {
    return await globalThis.fetch(resource, init);
  } catch (e) {
    if (e instanceof TypeError && /NetworkError/.test(e.message)) {
      const url = resource instanceof Request ? resource.url : String(resource);
      const method = (init?.method ?? (resource instanceof Request ? resource.method : 'GET')).toUpperCase();
      throw new HttpError(
        `${method} ${url}: no answer — denied (not in this deployment's allowed_hosts), ` +
          `timed out or unreachable; the run's outbound record says which`,
      );
    }
    throw e;
  }
}

/**
 * Turns `fn(input, ctx)` into the component's `run` export: `export const run = agent(fn)`.
 */
export function agent(fn) {
  return async function run(request) {
    let input;
    try {
      const text = new TextDecoder('utf-8', { fatal: true }).decode(request.input);
      input = text.trim() === '' ? null : JSON.parse(text);
    } catch (e) {
      throw { tag: 'invalid-input', val: `the input is not valid JSON: ${e.message}` };
    }
    const ctx = new Context(request);
    let output;
    try {
      let result = await fn(input, ctx);
      if (isGenerator(result)) result = await drain(result, ctx);
      if (emitted.has(ctx) && (result === undefined || result === null)) {
        // A streamed answer is its chunks; a trailing `null` would only corrupt it.
        return { output: new Uint8Array(0), contentType: TEXT };
      }
      output = JSON.stringify(result);
    } catch (e) {
      if (e instanceof InvalidInput) throw { tag: 'invalid-input', val: e.message };
      if (e instanceof Failed) throw { tag: 'failed', val: e.message };
      throw { tag: 'failed', val: describe(e) };
    }
    // `undefined` (a function without `return`) is sent as JSON `null`.
    return {
      output: new TextEncoder().encode(output ?? 'null'),
      contentType: 'application/json',
    };
  };
}

/** A generator object (async or not): not any iterable, since an array is an answer. */
function isGenerator(value) {
  const tag = Object.prototype.toString.call(value);
  return tag === '[object AsyncGenerator]' || tag === '[object Generator]';
}

/** Emits every value `generator` yields; answers what it returns. */
async function drain(generator, ctx) {
  for (;;) {
    const { value, done } = await generator.next();
    if (done) return value;
    ctx.emit(value);
  }
}

function describe(e) {
  const text =
    e instanceof Error
      ? `${e.name}: ${e.message}${e.stack ? `\n\n${e.stack}` : ''}`
      : `uncaught ${typeof e}: ${safeString(e)}`;
  return text.length > MAX_ERROR_CHARS ? `${text.slice(0, MAX_ERROR_CHARS - 1)}…` : text;
}

function safeString(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
