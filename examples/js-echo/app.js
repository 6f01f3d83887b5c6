// The smallest useful agent, in JavaScript: it answers with what it was sent, the version it
// ran on and the `marker` value from its deployment's configuration.
//
// Build and deploy (from this folder, with `gust serve` running):
//
//   gust build
//   gust config js-echo --set marker=hello
//   gust deploy js-echo build/js-echo.wasm
//   gust run js-echo '{"say": "hi"}'

import { agent } from '../../sdk/js/gust.js';

export const run = agent((input, ctx) => ({
  input,
  version: ctx.version,
  marker: ctx.config('marker', null),
}));
