// The reference agent flow in JavaScript: triage a support ticket in several steps.
//
// 1. check the ticket;
// 2. classify it with a model, through an OpenAI-compatible chat-completions API;
// 3. look the customer up with a tool API;
// 4. decide priority and queue, and answer with a typed result.
//
// The same flow as `examples/triage` (Rust) and `examples/python-triage`. Build and deploy
// (from this folder, with `gust serve` running):
//
//   gust build
//   gust config js-triage --set MODEL_BASE_URL=https://api.openai.com/v1 \
//       --set MODEL=gpt-4o-mini --set MODEL_API_KEY=sk-… \
//       --set TOOLS_BASE_URL=https://crm.example.com \
//       --allow-host https://api.openai.com --allow-host https://crm.example.com
//   gust deploy js-triage build/js-triage.wasm
//   gust run js-triage '{"customer_id": "c-42", "subject": "Charged twice", "body": "My card was billed two times."}'

import { agent, Failed, fetch, InvalidInput } from '../../sdk/js/gust.js';

const CATEGORIES = ['billing', 'outage', 'account', 'other'];
const URGENCIES = ['low', 'normal', 'high'];

export const run = agent(async (ticket, ctx) => {
  // 1. Check the ticket.
  if (ticket === null || typeof ticket !== 'object' || Array.isArray(ticket)) {
    throw new InvalidInput('the input is a ticket object');
  }
  const unknown = Object.keys(ticket).filter((k) => !['customer_id', 'subject', 'body'].includes(k));
  if (unknown.length > 0) throw new InvalidInput(`unknown field \`${unknown.sort()[0]}\``);
  const customerId = String(ticket.customer_id ?? '').trim();
  const subject = String(ticket.subject ?? '').trim();
  if (!customerId || !subject) {
    throw new InvalidInput('`subject` and `customer_id` are required');
  }
  ctx.progress(0.1, 'checked the ticket');

  // 2. Classify it with the model.
  const classification = await classify(subject, String(ticket.body ?? ''), ctx);
  ctx.info(`classified as ${classification.category} (${classification.urgency})`);
  ctx.progress(0.4, 'classified');

  // 3. Look the customer up.
  const customer = await lookup(customerId, ctx);
  ctx.info(`customer ${customer.id} is on the ${customer.tier} tier`);
  ctx.progress(0.7, 'looked up the customer');

  // 4. Decide.
  const { urgency } = classification;
  const { tier } = customer;
  let priority = 'p3';
  if (urgency === 'high' || (urgency === 'normal' && tier === 'enterprise')) priority = 'p1';
  else if (urgency === 'normal' || tier === 'enterprise') priority = 'p2';
  const queue = `${classification.category}-${priority === 'p1' ? 'urgent' : 'standard'}`;
  ctx.progress(1.0, 'routed');
  return {
    category: classification.category,
    urgency,
    summary: classification.summary,
    customer,
    priority,
    queue,
  };
});

function setting(ctx, key) {
  const value = ctx.config(key);
  if (value === undefined) throw new Failed(`the deployment does not set ${key}`);
  return value;
}

async function classify(subject, body, ctx) {
  const base = setting(ctx, 'MODEL_BASE_URL').replace(/\/+$/, '');
  const request = {
    model: setting(ctx, 'MODEL'),
    temperature: 0,
    response_format: { type: 'json_object' },
    messages: [
      {
        role: 'system',
        content:
          'You triage support tickets. Answer only JSON: ' +
          `{"category": one of ${JSON.stringify(CATEGORIES)}, "urgency": "low"|"normal"|"high", "summary": one sentence}.`,
      },
      { role: 'user', content: `${subject}\n\n${body}` },
    ],
  };
  let answer;
  try {
    answer = await fetch(`${base}/chat/completions`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${setting(ctx, 'MODEL_API_KEY')}`,
        'content-type': 'application/json',
      },
      body: JSON.stringify(request),
    });
  } catch (e) {
    throw new Failed(`the model could not be reached: ${e.message}`);
  }
  if (answer.status !== 200) throw new Failed(`the model answered HTTP ${answer.status}`);
  let classification;
  try {
    const completion = await answer.json();
    classification = JSON.parse(completion.choices[0].message.content);
  } catch (e) {
    throw new Failed(`the model did not answer the JSON asked for: ${e.message}`);
  }
  if (!CATEGORIES.includes(classification.category)) {
    throw new Failed(`the model chose an unknown category \`${classification.category}\``);
  }
  if (!URGENCIES.includes(classification.urgency)) {
    throw new Failed(`the model chose an unknown urgency \`${classification.urgency}\``);
  }
  return classification;
}

async function lookup(customerId, ctx) {
  const base = setting(ctx, 'TOOLS_BASE_URL').replace(/\/+$/, '');
  const safeId = customerId.replace(/[^A-Za-z0-9_-]/g, '');
  let answer;
  try {
    answer = await fetch(`${base}/customers/${safeId}`);
  } catch (e) {
    throw new Failed(`the customer tool could not be reached: ${e.message}`);
  }
  if (answer.status === 200) return answer.json();
  if (answer.status === 404) throw new InvalidInput(`no customer \`${customerId}\``);
  throw new Failed(`the customer tool answered HTTP ${answer.status}`);
}
