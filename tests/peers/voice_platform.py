#!/usr/bin/env python3
"""A stand-in for a Twilio-compatible voice platform, for paystep's voice tests.

It takes call requests on the REST API as Twilio does (`POST /2010-04-01/Accounts/{sid}/
Calls.json`, HTTP Basic account_sid:auth_token) and then, when the test says so, behaves
like the platform during the call: fetches the call's script from its `Url`, follows the
`<Gather>` with the keys the test gives, and posts status callbacks. Every request it makes
is signed with `X-Twilio-Signature` computed by the official `twilio` package
(RequestValidator.compute_signature), an implementation paystep shares no code with.

    python3 voice_platform.py --port P --account-sid AC... --auth-token T

Control API (JSON in and out):
  GET  /2010-04-01/Accounts/{sid}.json  the account, for health checks (HTTP Basic)
  GET  /_calls                       the calls requested so far
  POST /_control/route {"from", "to"}  requests for URLs starting with `from` go to `to`
                                     instead, signed for the URL as given (a reverse proxy)
  POST /_control/refuse {"status", "body"}  the next call request gets this answer
  POST /_control/fetch {"sid", "tamper"?, "call_sid"?}
                                     POSTs to the call's Url; answers {"status", "body"}
  POST /_control/gather {"sid", "digits", "tamper"?, "replay"?}
                                     POSTs the keys to the last script's <Gather action>;
                                     replay sends the previous gather request again
  POST /_control/status {"sid", "status"}  POSTs the call's StatusCallback
  POST /_control/incoming {"from", "to", "url"}  a call to the service number: POSTs to
                                     the number's URL; answers {"sid", "status", "body"}
  POST /_control/record {"sid"}      the caller said a phrase: POSTs RecordingUrl to the last
                                     script's <Record action>
  POST /verify                       a speaker-verification service: {"match": ...} as
                                     /_control/verifier {"mode": "match"|"reject"|"slow"} says
  GET  /_verifications               what /verify was asked
With --vxml-secret it is also a VoiceXML platform: POST /originate (JSON call_id, to, from,
url, status_url, signed as Standard Webhooks, checked with the standardwebhooks package), and
  POST /_control/vxml/fetch {"call_id"}   GETs the call's url (its first document)
  POST /_control/vxml/submit {"call_id", "digits", "event"?, "replay"?}
                                     follows the document's <filled> (or <noinput>, ...)
                                     <submit next namelist>, posting the digits
  POST /_control/vxml/status {"call_id", "status"}  POSTs {"status"} to the status_url
  POST /_control/vxml/incoming {"from", "url"}  a call to the service number: GETs the
                                     number's URL with ?from=; answers {"call_id", "status", "body"}
Prints `listening` when it accepts connections.
"""

import argparse
import base64
import itertools
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twilio.request_validator import RequestValidator

VXML = "{http://www.w3.org/2001/vxml}"

lock = threading.Lock()
calls = {}
order = []
routes = []
refusals = []
verifier = {"mode": "match", "requests": []}
numbers = itertools.count(1)


def routed(url):
    for prefix, target in routes:
        if url.startswith(prefix):
            return target + url[len(prefix):]
    return url


def post_signed(url, fields, token, tamper=False):
    signature = RequestValidator(token).compute_signature(url, fields)
    if tamper:
        signature = RequestValidator(token + "x").compute_signature(url, fields)
    request = urllib.request.Request(
        routed(url),
        data=urllib.parse.urlencode(fields).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError as error:
        # Nothing answered at that URL: say so to the test instead of dying.
        return 0, str(error)


def send(request):
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError as error:
        return 0, str(error)


def call_fields(call, call_sid=None):
    return {
        "CallSid": call_sid or call["sid"],
        "AccountSid": args.account_sid,
        "From": call["from"],
        "To": call["to"],
        "CallStatus": "in-progress",
        "Direction": "outbound-api",
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("content-length", "0"))
        return self.rfile.read(length) if length else b""

    def authorized(self):
        expected = base64.b64encode(f"{args.account_sid}:{args.auth_token}".encode()).decode()
        return self.headers.get("authorization") == f"Basic {expected}"

    def do_GET(self):
        if self.path == f"/2010-04-01/Accounts/{args.account_sid}.json":
            if not self.authorized():
                return self.reply(401, {"code": 20003, "message": "Authenticate"})
            return self.reply(200, {"sid": args.account_sid, "status": "active"})
        if self.path == "/_verifications":
            with lock:
                return self.reply(200, verifier["requests"])
        if self.path == "/_calls":
            with lock:
                self.reply(200, [calls[sid] for sid in order])
        else:
            self.reply(404, {"message": "not found"})

    def do_POST(self):
        body = self.body()
        path = self.path
        if path == f"/2010-04-01/Accounts/{args.account_sid}/Calls.json":
            return self.create_call(body)
        if path.startswith("/2010-04-01/"):
            return self.reply(404, {"code": 20404, "message": "not found"})
        command = json.loads(body or b"{}")
        if path == "/_control/route":
            with lock:
                routes.append((command["from"], command["to"]))
            return self.reply(200, {})
        if path == "/_control/refuse":
            with lock:
                refusals.append((command["status"], command.get("body", {})))
            return self.reply(200, {})
        if path == "/originate":
            return self.originate(body)
        if path.startswith("/_control/vxml/"):
            return self.vxml(path, command)
        if path == "/_control/incoming":
            return self.incoming(command)
        if path == "/verify":
            return self.verify(command)
        if path == "/_control/verifier":
            verifier["mode"] = command["mode"]
            return self.reply(200, {})
        with lock:
            call = calls.get(command.get("sid"))
        if call is None:
            return self.reply(404, {"message": "no such call"})
        if path == "/_control/fetch":
            fields = call_fields(call, command.get("call_sid"))
            status, text = post_signed(call["url"], fields, args.auth_token, command.get("tamper", False))
            if status == 200:
                call["script"] = text
            return self.reply(200, {"status": status, "body": text})
        if path == "/_control/gather":
            if command.get("replay"):
                url, fields = call["last_gather"]
            else:
                gather = ElementTree.fromstring(call["script"]).find("Gather")
                url = gather.get("action")
                fields = dict(call_fields(call), Digits=command["digits"])
                call["last_gather"] = (url, fields)
            status, text = post_signed(url, fields, args.auth_token, command.get("tamper", False))
            if status == 200:
                call["script"] = text
            return self.reply(200, {"status": status, "body": text})
        if path == "/_control/record":
            record = ElementTree.fromstring(call["script"]).find("Record")
            url = record.get("action")
            fields = dict(
                call_fields(call),
                RecordingUrl=f"http://127.0.0.1:{args.port}/recordings/{call['sid']}.wav",
                RecordingDuration="3",
            )
            status, text = post_signed(url, fields, args.auth_token)
            if status == 200:
                call["script"] = text
            return self.reply(200, {"status": status, "body": text})
        if path == "/_control/status":
            fields = dict(call_fields(call), CallStatus=command["status"])
            status, text = post_signed(call["status_callback"], fields, args.auth_token)
            return self.reply(200, {"status": status, "body": text})
        return self.reply(404, {"message": "unknown control"})

    def originate(self, body):
        """A VoiceXML platform's originate endpoint: Standard Webhooks signature required."""
        if args.vxml_secret is None:
            return self.reply(404, {"message": "no VoiceXML here"})
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            request = Webhook(args.vxml_secret).verify(body, headers)
        except WebhookVerificationError as error:
            return self.reply(401, {"message": str(error)})
        call = {
            "sid": request["call_id"],
            "to": request["to"],
            "from": request["from"],
            "url": request["url"],
            "status_url": request["status_url"],
            "document": None,
            "dialect": "voicexml",
        }
        with lock:
            calls[call["sid"]] = call
            order.append(call["sid"])
        return self.reply(200, {"call_id": call["sid"], "status": "queued"})

    def vxml(self, path, command):
        """Behaves like a VoiceXML browser in the call: fetch, then follow <submit>."""
        if path == "/_control/vxml/incoming":
            # A call to the service number: the platform fetches the number's URL with the
            # caller id in it.
            sid = "vxml-in-%d" % next(numbers)
            separator = "&" if "?" in command["url"] else "?"
            url = command["url"] + separator + urllib.parse.urlencode({"from": command["from"]})
            call = {"sid": sid, "to": None, "from": command["from"], "url": url,
                    "status_url": None, "document": None, "dialect": "voicexml"}
            with lock:
                calls[sid] = call
            status, text = send(urllib.request.Request(routed(url), method="GET"))
            if status == 200:
                call["document"] = text
            return self.reply(200, {"call_id": sid, "status": status, "body": text})
        with lock:
            call = calls.get(command.get("call_id"))
        if call is None:
            return self.reply(404, {"message": "no such call"})
        if path == "/_control/vxml/fetch":
            request = urllib.request.Request(routed(call["url"]), method="GET")
            status, text = send(request)
        elif path == "/_control/vxml/submit":
            if command.get("replay"):
                url, fields = call["last_submit"]
            else:
                field = ElementTree.fromstring(call["document"]).find(f"{VXML}form/{VXML}field")
                handler = command.get("event", "filled")
                submit = field.find(f"{VXML}{handler}/{VXML}submit")
                url = submit.get("next")
                names = submit.get("namelist").split()
                fields = {name: command.get("digits", "") for name in names}
                call["last_submit"] = (url, fields)
            data = urllib.parse.urlencode(fields).encode()
            request = urllib.request.Request(
                routed(url),
                data=data,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                method="POST",
            )
            status, text = send(request)
        elif path == "/_control/vxml/status":
            request = urllib.request.Request(
                routed(call["status_url"]),
                data=json.dumps({"status": command["status"]}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            status, text = send(request)
        else:
            return self.reply(404, {"message": "unknown control"})
        if status == 200 and path != "/_control/vxml/status":
            call["document"] = text
        return self.reply(200, {"status": status, "body": text})

    def verify(self, command):
        """The speaker-verification service: match, reject, or too slow to answer."""
        with lock:
            verifier["requests"].append(command)
            mode = verifier["mode"]
        if mode == "slow":
            time.sleep(3)
        return self.reply(200, {"match": mode == "match"})

    def incoming(self, command):
        """A call to the service number: the platform asks the number's URL what to do."""
        sid = "CA%032x" % next(numbers)
        call = {
            "sid": sid,
            "to": command["to"],
            "from": command["from"],
            "url": command["url"],
            "method": "POST",
            "status_callback": None,
            "script": None,
            "direction": "inbound",
        }
        with lock:
            calls[sid] = call
        fields = dict(call_fields(call), Direction="inbound", CallStatus="ringing")
        status, text = post_signed(call["url"], fields, args.auth_token)
        if status == 200:
            call["script"] = text
        return self.reply(200, {"sid": sid, "status": status, "body": text})

    def create_call(self, body):
        if not self.authorized():
            return self.reply(401, {"code": 20003, "message": "Authenticate"})
        with lock:
            if refusals:
                status, answer = refusals.pop(0)
                return self.reply(status, answer)
        form = dict(urllib.parse.parse_qsl(body.decode()))
        sid = "CA%032x" % next(numbers)
        call = {
            "sid": sid,
            "to": form.get("To"),
            "from": form.get("From"),
            "url": form.get("Url"),
            "method": form.get("Method"),
            "status_callback": form.get("StatusCallback"),
            "script": None,
        }
        with lock:
            calls[sid] = call
            order.append(sid)
        self.reply(201, {"sid": sid, "status": "queued", "to": call["to"], "from": call["from"]})


class Server(ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--vxml-secret", help="a whsec_ secret: also a VoiceXML platform")
    args = parser.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    print("listening", flush=True)
    server.serve_forever()
