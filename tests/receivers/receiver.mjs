// A push receiver as a user writes one: it checks the access token its application issued,
// verifies the Standard Webhooks signature with the `standardwebhooks` package, and answers
// 204. Each request becomes one JSON line on stdout (what the end-to-end tests read).
//
//     WEBHOOK_SECRET=whsec_... ACCESS_TOKEN=... node receiver.mjs

import http from 'node:http';
import { Webhook } from 'standardwebhooks';

const webhook = new Webhook(process.env.WEBHOOK_SECRET);
const accessToken = process.env.ACCESS_TOKEN;

const record = (fields) => process.stdout.write(JSON.stringify(fields) + '\n');

const server = http.createServer((request, response) => {
  const chunks = [];
  request.on('data', (chunk) => chunks.push(chunk));
  request.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    if (request.headers.authorization !== `Bearer ${accessToken}`) {
      record({ verified: false, why: 'wrong access token' });
      response.writeHead(401).end();
      return;
    }
    let event;
    try {
      event = webhook.verify(body, request.headers);
    } catch (e) {
      record({ verified: false, why: String(e) });
      response.writeHead(400).end();
      return;
    }
    record({ verified: true, id: request.headers['webhook-id'], event });
    response.writeHead(204).end();
  });
});

server.listen(0, '127.0.0.1', () => {
  record({ listening: `http://127.0.0.1:${server.address().port}` });
});
