#!/usr/bin/env python3
"""A retailer's webhook endpoint for paystep's tests.

It verifies every delivery with the `standardwebhooks` package (an implementation of Standard
Webhooks that paystep does not share code with) and records the verified ones. A control
API on the same port makes it misbehave the ways real endpoints do:

  POST /_control/mode   {"mode": "ok" | "fail" | "slow" | "gone" | "redirect" | "huge"}
      ok: 204; fail: 500; slow: answers after --slow-s seconds (longer than the daemon's
      timeout); gone: 410; redirect: 302 to /elsewhere (which would accept); huge: 500 with
      a 1 MiB body.
  GET  /_received       {"deliveries": [{"webhook_id", "payload"}], "attempts": n,
                          "rejected": n}

Deliveries whose signature does not verify get 401 and count as rejected.
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

state_lock = threading.Lock()
state = {"mode": "ok", "deliveries": [], "attempts": 0, "rejected": 0}


def make_handler(verifiers, slow_s):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, body=b""):
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def body(self):
            length = int(self.headers.get("content-length", "0"))
            return self.rfile.read(length) if length else b""

        def do_GET(self):
            if self.path == "/_received":
                with state_lock:
                    body = json.dumps(state).encode()
                self.reply(200, body)
            else:
                self.reply(404)

        def do_POST(self):
            body = self.body()
            if self.path == "/_control/mode":
                mode = json.loads(body)["mode"]
                assert mode in ("ok", "fail", "slow", "gone", "redirect", "huge"), mode
                with state_lock:
                    state["mode"] = mode
                self.reply(200, b"{}")
                return
            with state_lock:
                state["attempts"] += 1
                mode = state["mode"]
            if mode == "fail":
                self.reply(500, b'{"error": "receiver is failing on purpose"}')
                return
            if mode == "gone":
                self.reply(410, b'{"error": "endpoint removed"}')
                return
            if mode == "redirect" and self.path != "/elsewhere":
                self.send_response(302)
                self.send_header("location", "/elsewhere")
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if mode == "huge":
                self.reply(500, b"x" * (1 << 20))
                return
            if mode == "slow":
                time.sleep(slow_s)
            headers = {key.lower(): value for key, value in self.headers.items()}
            payload = None
            for verifier in verifiers:
                try:
                    payload = verifier.verify(body, headers)
                    break
                except (WebhookVerificationError, ValueError):  # binascii.Error is a ValueError
                    continue
            if payload is None:
                with state_lock:
                    state["rejected"] += 1
                self.reply(401, b'{"error": "bad signature"}')
                return
            with state_lock:
                state["deliveries"].append(
                    {"webhook_id": headers["webhook-id"], "payload": payload}
                )
            self.reply(204)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A daemon killed mid-request resets its connection: expected in the crash tests.
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", action="append", required=True)
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--slow-s", type=float, default=3.0)
    args = parser.parse_args()
    state["mode"] = args.mode
    verifiers = [Webhook(secret) for secret in args.secret]
    server = Server(("127.0.0.1", args.port), make_handler(verifiers, args.slow_s))
    server.serve_forever()


if __name__ == "__main__":
    main()
