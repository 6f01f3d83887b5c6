// Test guest: the input's `op` picks what the JavaScript SDK is made to do.

import { agent, Failed, fetch, HttpError, InvalidInput } from '../../../sdk/js/gust.js';

function explode(depth) {
  if (depth === 0) throw new Error('boom');
  explode(depth - 1);
}

// The streaming form: yields chunks around a wait on `url`, then returns `tail`.
async function* tokens(url, tail) {
  yield 'first ';
  await fetch(url);
  yield 'second';
  return tail;
}

// Counts the calls this instance served: every call gets a fresh instance, so always 1.
let served = 0;

export const run = agent(async (input, ctx) => {
  const op = input?.op;
  switch (op) {
    case 'context':
      return {
        agent: ctx.agent,
        version: ctx.version,
        run_id: ctx.runId,
        mode: ctx.mode,
        attempt: ctx.attempt,
        content_type: ctx.contentType,
        has_deadline: ctx.deadline !== null,
        config: ctx.config(input.key ?? 'marker', null),
      };
    case 'count':
      served += 1;
      return { served };
    case 'raise':
      explode(3);
      break;
    case 'throw-string':
      throw 'a bare string';
    case 'invalid':
      throw new InvalidInput('the probe was asked to refuse');
    case 'failed':
      throw new Failed('the probe was asked to fail');
    case 'steps':
      for (let step = 1; step <= 3; step++) {
        ctx.info(`step ${step}`);
        ctx.progress(step / 3, `step ${step} of 3`);
      }
      return { steps: 3 };
    case 'stream':
      // Emits, waits on `url` (a gate the test holds), emits again.
      ctx.emit('first ');
      await fetch(input.url);
      ctx.emit(new TextEncoder().encode('second'));
      return undefined;
    case 'generate':
      return tokens(input.url, input.tail);
    case 'fetch':
      try {
        const answer = await fetch(input.url);
        return { status: answer.status, body: await answer.text() };
      } catch (e) {
        return e instanceof HttpError ? { error: e.message } : { other: String(e) };
      }
    case 'post': {
      const answer = await fetch(input.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ sent: input.payload ?? null }),
      });
      return { status: answer.status, body: await answer.json() };
    }
    default:
      return { echo: input };
  }
});
