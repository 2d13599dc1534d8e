#!/usr/bin/env python3
"""A real SMTP server (aiosmtpd 1.4.6) for the email channel's tests.

STARTTLS and AUTH (LOGIN or PLAIN) are required, as on a production relay. Every accepted
message is parsed and saved as one JSON file in --maildir, written under a temporary name and
renamed, so a reader never sees half a file. Prints one line, `listening`, when it accepts
connections.

    python3 smtp_server.py --port P --cert CERT --key KEY --user U --password PW \
        --maildir DIR [--reject RCPT ...] [--tempfail RCPT ...] [--no-tls | --implicit-tls]

--reject answers that recipient `550 5.1.1 mailbox unavailable`; --tempfail answers
`451 4.3.0 try again later`. --no-tls serves plain SMTP without STARTTLS (AUTH still
required, and allowed in plain text, so a client that fell back to plain text would succeed
and be caught); --implicit-tls speaks TLS from the first byte, as on port 465.
"""

import argparse
import asyncio
import email
import email.policy
import itertools
import json
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", help="PEM certificate (chain) of the server")
    parser.add_argument("--key", help="PEM private key of the server")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--reject", action="append", default=[], metavar="RCPT")
    parser.add_argument("--tempfail", action="append", default=[], metavar="RCPT")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-tls", action="store_true")
    mode.add_argument("--implicit-tls", action="store_true")
    arguments = parser.parse_args()
    if not arguments.no_tls and not (arguments.cert and arguments.key):
        parser.error("--cert and --key are needed unless --no-tls is given")
    return arguments


class Handler:
    def __init__(self, maildir, reject, tempfail):
        self.maildir = maildir
        self.reject = {address.lower() for address in reject}
        self.tempfail = {address.lower() for address in tempfail}
        self.counter = itertools.count(1)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 mailbox unavailable"
        if address.lower() in self.tempfail:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": message["Subject"],
            "message_id": message["Message-ID"],
            "from": message["From"] and str(message["From"]),
            "reply_to": message["Reply-To"] and str(message["Reply-To"]),
            "text": first_part(message, "text/plain"),
            "html": first_part(message, "text/html"),
            "content_type": message.get_content_type(),
            # Whether the session was encrypted when the message came: a test can prove that
            # nothing travelled in plain text.
            "tls": server.transport.get_extra_info("ssl_object") is not None,
        }
        name = f"{next(self.counter):06d}.json"
        temporary = os.path.join(self.maildir, f".{name}.tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(record, file, ensure_ascii=False, indent=2)
        os.replace(temporary, os.path.join(self.maildir, name))
        return "250 2.0.0 Message accepted for delivery"


def first_part(message, content_type):
    for part in message.walk():
        if part.get_content_type() == content_type and not part.is_multipart():
            # The wire's CRLF line ends become "\n", as the sender wrote them.
            return part.get_content().replace("\r\n", "\n")
    return None


def authenticator_for(user, password):
    expected = LoginPassword(user.encode(), password.encode())

    def authenticate(server, session, envelope, mechanism, auth_data):
        # handled=False: aiosmtpd answers a failure with `535 5.7.8 Authentication
        # credentials invalid` itself (its default, handled=True, answers nothing).
        return AuthResult(success=auth_data == expected, handled=False)

    return authenticate


def tls_context(cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(arguments):
    handler = Handler(arguments.maildir, arguments.reject, arguments.tempfail)
    authenticator = authenticator_for(arguments.user, arguments.password)
    context = None if arguments.no_tls else tls_context(arguments.cert, arguments.key)
    starttls = context is not None and not arguments.implicit_tls

    def smtp_session():
        return SMTP(
            handler,
            hostname="localhost",
            tls_context=context if starttls else None,
            require_starttls=starttls,
            auth_required=True,
            # AUTH needs STARTTLS first. With implicit TLS the connection is encrypted
            # before aiosmtpd sees it; in --no-tls mode AUTH must work in plain text, so
            # that a client falling back to plain text would get through and be caught.
            auth_require_tls=starttls,
            authenticator=authenticator,
        )

    server = await asyncio.get_running_loop().create_server(
        smtp_session,
        host=arguments.host,
        port=arguments.port,
        ssl=context if arguments.implicit_tls else None,
    )
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


def main():
    arguments = parse_arguments()
    os.makedirs(arguments.maildir, exist_ok=True)
    try:
        asyncio.run(serve(arguments))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
