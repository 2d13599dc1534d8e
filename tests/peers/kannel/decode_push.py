#!/usr/bin/env python3
"""Decode a WAP Push SMS (as Kannel's PPG submits it) back to SI XML with `wbxml2xml`.

usage: decode_push.py [--verbose] [HEX ...]     (or the hex on stdin)

HEX is the submit_sm short_message in hex (the SMSC simulator's `short_message_hex`).
Several HEX arguments (or lines on stdin) are the segments of one concatenated push, in any
order: each must start with a UDH carrying IE 0x00 or 0x08 (concatenation) and the payloads
are joined by sequence number. The input layout is

    UDH        first octet = UDH length, e.g. 06 05 04 0B 84 23 F0 (ports 2948 <- 9200)
    WSP push   TID (1 octet), PDU type 0x06, uintvar HeadersLen, then HeadersLen octets
               (content type, e.g. 0xAE = application/vnd.wap.sic, then headers)
    WBXML      the SI, handed to `wbxml2xml -m 0 -o - FILE` (Debian libwbxml2-utils)

Prints the XML on stdout (one line, compact mode). With --verbose, prints the UDH, WSP
header octets and WBXML hex on stderr first. Exits non-zero when anything does not parse.
Standard library only; needs /usr/bin/wbxml2xml.
"""
import os
import subprocess
import sys
import tempfile


def parse_udh(octets):
    """Returns (udh_bytes, payload, concat) where concat is (ref, total, seq) or None."""
    if not octets:
        raise ValueError("empty short_message")
    udh_length = octets[0]
    if udh_length + 1 > len(octets):
        raise ValueError(f"UDH length {udh_length} exceeds the message ({len(octets)} octets)")
    udh = octets[: udh_length + 1]
    concat = None
    offset = 1
    while offset + 1 < len(udh):
        iei, length = udh[offset], udh[offset + 1]
        data = udh[offset + 2: offset + 2 + length]
        if iei == 0x00 and length == 3:
            concat = (data[0], data[1], data[2])
        elif iei == 0x08 and length == 4:
            concat = ((data[0] << 8) | data[1], data[2], data[3])
        offset += 2 + length
    return udh, octets[udh_length + 1:], concat


def read_uintvar(octets, offset):
    value = 0
    for count in range(5):
        if offset >= len(octets):
            raise ValueError("truncated uintvar")
        octet = octets[offset]
        offset += 1
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            return value, offset
    raise ValueError("uintvar longer than 5 octets")


def split_wsp_push(wsp):
    """Returns (tid, headers_octets, body) of a connectionless WSP Push PDU."""
    if len(wsp) < 3:
        raise ValueError("WSP PDU too short")
    tid, pdu_type = wsp[0], wsp[1]
    if pdu_type != 0x06:
        raise ValueError(f"WSP PDU type 0x{pdu_type:02x} is not Push (0x06)")
    headers_length, offset = read_uintvar(wsp, 2)
    headers = wsp[offset: offset + headers_length]
    if len(headers) != headers_length:
        raise ValueError("WSP headers truncated")
    return tid, headers, wsp[offset + headers_length:]


def wbxml_to_xml(wbxml):
    with tempfile.NamedTemporaryFile(suffix=".wbxml", delete=False) as handle:
        handle.write(wbxml)
        path = handle.name
    try:
        # wbxml2xml reads a file ('-' = stdin also works); -o - writes to stdout; -m 0 is
        # compact output (no newlines). It prints "wbxml2xml succeeded" on stderr, exits 45
        # on a WBXML error, but exits 0 when it cannot open the input file.
        result = subprocess.run(["wbxml2xml", "-m", "0", "-o", "-", path],
                                capture_output=True)
    finally:
        os.unlink(path)
    if result.returncode != 0 or not result.stdout:
        raise ValueError(result.stderr.decode("utf-8", "replace").strip())
    return result.stdout.decode("utf-8")


def decode(hex_segments, verbose=False):
    segments = [bytes.fromhex("".join(h.split())) for h in hex_segments if h.strip()]
    if not segments:
        raise ValueError("no input")
    parts = []
    udhs = []
    for segment in segments:
        udh, payload, concat = parse_udh(segment)
        udhs.append(udh)
        parts.append((concat[2] if concat else 1, concat, payload))
    if len(parts) > 1:
        if any(concat is None for _, concat, _ in parts):
            raise ValueError("several segments but not all carry a concatenation IE")
        totals = {concat[1] for _, concat, _ in parts}
        if len(totals) != 1 or totals.pop() != len(parts):
            raise ValueError("segment count does not match the concatenation IE")
    parts.sort(key=lambda part: part[0])
    wsp = b"".join(payload for _, _, payload in parts)
    tid, headers, body = split_wsp_push(wsp)
    if verbose:
        for udh in udhs:
            sys.stderr.write(f"udh: {udh.hex()}\n")
        sys.stderr.write(f"wsp: tid=0x{tid:02x} type=0x06 headers={headers.hex()}\n")
        sys.stderr.write(f"wbxml ({len(body)} octets): {body.hex()}\n")
    return wbxml_to_xml(body)


def main(argv):
    verbose = "--verbose" in argv
    hex_args = [arg for arg in argv if arg != "--verbose"]
    if not hex_args:
        hex_args = [line for line in sys.stdin.read().splitlines() if line.strip()]
    try:
        print(decode(hex_args, verbose))
    except ValueError as error:
        sys.stderr.write(f"decode_push.py: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
