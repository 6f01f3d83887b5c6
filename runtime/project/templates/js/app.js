// The `{{agent}}` agent: greets whoever it is asked to.
//
// `gust build` turns this module into a WebAssembly component; see README.md.

import { agent, InvalidInput } from './sdk/gust.js';

export const run = agent(async (input, ctx) => {
  const name = input?.name;
  if (typeof name !== 'string' || name.trim() === '') {
    throw new InvalidInput('`name` is missing');
  }
  ctx.info(`greeting ${name}`);
  // Set per deployment: `gust config {{agent}} --set GREETING=Hi`, then deploy again.
  const greeting = ctx.config('GREETING', 'Hello');
  return { greeting: `${greeting}, ${name}!`, version: ctx.version };
});
