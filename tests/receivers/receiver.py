"""A push receiver as a user writes one: it checks the access token its application issued,
verifies the Standard Webhooks signature with the `standardwebhooks` package, and answers
204. Each request becomes one JSON line on stdout (what the end-to-end tests read).

    WEBHOOK_SECRET=whsec_... ACCESS_TOKEN=... python3 receiver.py
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

webhook = Webhook(os.environ["WEBHOOK_SECRET"])
access_token = os.environ["ACCESS_TOKEN"]


def record(**fields):
    print(json.dumps(fields), flush=True)


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("authorization") != f"Bearer {access_token}":
            record(verified=False, why="wrong access token")
            return self.answer(401)
        try:
            event = webhook.verify(body, dict(self.headers))
        except WebhookVerificationError as e:
            record(verified=False, why=str(e))
            return self.answer(400)
        record(verified=True, id=self.headers["webhook-id"], event=event)
        self.answer(204)

    def answer(self, status):
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Receiver)
print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
sys.stdout.flush()
server.serve_forever()
