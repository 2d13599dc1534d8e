#!/usr/bin/env python3
"""Measurement helpers for scripts/bench.sh (see BENCHMARKS.md). Standard library only.

scripts/bench.sh starts and stops every service and calls one subcommand per measurement.
Each measurement appends its figures to the raw CSV given with --record, one row per value:
    run,database,figure,value,note
`report` turns that CSV into the medians, ratios, tables and plot.
"""

import argparse
import asyncio
import csv
import http.client
import json
import os
import re
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Load generators started here, ended with us: scripts/bench.sh stops a part with SIGTERM.
CHILDREN = []


def on_sigterm(signum, frame):
    for child in CHILDREN:
        if child.poll() is None:
            child.kill()
    os._exit(143)


def log(message):
    sys.stderr.write(f"   {message}\n")
    sys.stderr.flush()


def fail(message):
    sys.stderr.write(f"bench.py: {message}\n")
    sys.exit(1)


# ---------------------------------------------------------------------------------------
# Recording


class Recorder:
    def __init__(self, args):
        self.path = getattr(args, "record", None)
        self.run = getattr(args, "run", "")
        self.database = getattr(args, "db", "-") or "-"

    def __call__(self, figure, value, note="", database=None):
        if not self.path:
            return
        if isinstance(value, float):
            value = f"{value:.6g}"
        with open(self.path, "a", newline="") as file:
            csv.writer(file).writerow(
                [self.run, database or self.database, figure, value, note]
            )


def add_record_arguments(parser):
    parser.add_argument("--record", help="raw CSV to append figures to")
    parser.add_argument("--run", default="")
    parser.add_argument("--db", default="-")


# ---------------------------------------------------------------------------------------
# HTTP


class Http:
    """One keep-alive connection to one origin, for one thread."""

    def __init__(self, base, timeout=30):
        parsed = urllib.parse.urlsplit(base)
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.timeout = timeout
        self.connection = None

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout
                )
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.close()
                return response.status, data
            except (http.client.HTTPException, ConnectionError, OSError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method, path, body=None, token=None, expect=(200, 201)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, data = self.request(method, path, body, headers)
        if status not in expect:
            raise RuntimeError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data) if data else None

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def get_status(url, timeout=1.0):
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    try:
        path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        connection.request("GET", path or "/")
        response = connection.getresponse()
        body = response.read()
        return response.status, body
    finally:
        connection.close()


def parallel(count, concurrency, work):
    """Calls work(http_index, item) for items 0..count-1 on `concurrency` threads; returns
    the results in item order. The first exception is raised again."""
    results = [None] * count
    errors = []
    lock = threading.Lock()
    next_item = [0]

    def worker(index):
        while True:
            with lock:
                if errors or next_item[0] >= count:
                    return
                item = next_item[0]
                next_item[0] += 1
            try:
                results[item] = work(index, item)
            except Exception as error:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(error)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------------------
# The daemon's /proc figures and /metrics


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as file:
        text = file.read()
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14 and 15 (utime, stime) of proc(5); fields[0] here is field 3.
    return int(fields[11]) + int(fields[12])


def rss_kib(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


METRIC_LINE = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def metrics(base, admin):
    connection = Http(base, timeout=30)
    try:
        status, body = connection.request(
            "GET", "/metrics", headers={"Authorization": f"Bearer {admin}"}
        )
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"GET /metrics: {status} {body[:200]!r}")
    outbox, processes = {}, {}
    for line in body.decode().splitlines():
        match = METRIC_LINE.match(line.strip())
        if not match:
            continue
        name, labels, value = match.groups()
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name == "paystep_outbox_messages":
            status_name = labels.get("status", "?")
            outbox[status_name] = outbox.get(status_name, 0) + int(float(value))
        elif name == "paystep_processes":
            processes[labels.get("status", "?")] = int(float(value))
    return outbox, processes


def queued(base, admin):
    return metrics(base, admin)[0].get("queued", 0)


def wait_drained(base, admin, timeout, poll=0.25):
    """Polls until no message is queued; returns (queued at start, remaining, seconds)."""
    started = time.monotonic()
    first = remaining = queued(base, admin)
    while remaining > 0 and time.monotonic() - started < timeout:
        time.sleep(poll)
        remaining = queued(base, admin)
    return first, remaining, time.monotonic() - started


# ---------------------------------------------------------------------------------------
# Subcommands


def cmd_free_port(args):
    import socket

    ports, sockets = [], []
    for _ in range(args.count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    print(" ".join(map(str, ports)))


def cmd_launch(args):
    """Starts the daemon detached (its own session), writes its pid, and waits for the first
    200 from /readyz: the start-up time is from just before the exec to that answer."""
    record = Recorder(args)
    stdout = open(args.stdout, "ab")
    stderr = open(args.stderr, "ab")
    started = time.monotonic()
    process = subprocess.Popen(
        args.argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        cwd=args.cwd,
        start_new_session=True,
    )
    with open(args.pidfile, "w") as file:
        file.write(str(process.pid))
    deadline = started + args.timeout
    ready = False
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            status, _ = get_status(args.ready, timeout=1.0)
            if status == 200:
                ready = True
                break
        except OSError:
            pass
        time.sleep(0.005)
    elapsed_ms = (time.monotonic() - started) * 1000
    if not ready:
        if process.poll() is None:
            process.kill()
            process.wait()
        tail = open(args.stderr, errors="replace").read()[-2000:]
        fail(
            f"the daemon did not answer 200 on {args.ready} within {args.timeout} s "
            f"(exit code {process.returncode}); its log ends:\n{tail}"
        )
    rss = rss_kib(process.pid) / 1024
    if args.figures:
        record("startup_ms", elapsed_ms)
        record("rss_idle_mib", rss)
    print(json.dumps({"pid": process.pid, "startup_ms": round(elapsed_ms, 1), "rss_mib": round(rss, 1)}))


def cmd_setup(args):
    """A retailer, `processes` customers with credit, one active process each."""
    admin = args.admin
    main = Http(args.url)
    retailer = main.json("POST", "/admin/v1/retailers", {"name": "Bench"}, admin)
    api_key = retailer["api_key"]
    msisdns = [f"+49170{args.msisdn_base + i:07d}" for i in range(args.processes)]

    connections = [Http(args.url) for _ in range(args.concurrency)]

    def create(index, item):
        http_ = connections[index]
        customer = http_.json(
            "POST",
            "/admin/v1/customers",
            {"name": f"Bench {item}", "msisdn": msisdns[item]},
            admin,
        )
        http_.json(
            "POST",
            f"/admin/v1/customers/{customer['id']}/deposits",
            {"amount": args.deposit, "currency": "EUR"},
            admin,
        )
        process = http_.json(
            "POST",
            "/v1/processes",
            {
                "customer": {"msisdn": msisdns[item]},
                "currency": "EUR",
                "release": args.release,
                "top_up": {"policy": "none"},
            },
            api_key,
        )
        return process["id"]

    ids = parallel(args.processes, args.concurrency, create)
    wanted = set(ids)
    links = {}
    deadline = time.monotonic() + args.timeout
    while len(links) < len(wanted):
        if time.monotonic() > deadline:
            fail(
                f"only {len(links)} of {len(wanted)} confirmation requests reached the console "
                f"({args.console}) within {args.timeout} s"
            )
        try:
            with open(args.console) as file:
                for line in file:
                    if not line.endswith("\n"):
                        break
                    message = json.loads(line)
                    if (
                        message.get("kind") == "confirmation_request"
                        and message.get("process_id") in wanted
                    ):
                        links[message["process_id"]] = message["url"]
        except FileNotFoundError:
            pass
        if len(links) < len(wanted):
            time.sleep(0.05)

    def confirm(index, item):
        http_ = connections[index]
        url = urllib.parse.urlsplit(links[ids[item]])
        status, page = http_.request(
            "POST",
            url.path,
            "action=confirm",
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        if status != 200:
            raise RuntimeError(f"confirming {ids[item]}: {status} {page[:300]!r}")
        process = http_.json("GET", f"/v1/processes/{ids[item]}", token=api_key)
        if process["status"] != "active":
            raise RuntimeError(f"process {ids[item]} is {process['status']} after confirming")

    parallel(args.processes, args.concurrency, confirm)
    with open(args.out_key, "w") as file:
        file.write(api_key)
    with open(args.out_paths, "w") as file:
        for process_id in ids:
            file.write(f"/v1/processes/{process_id}/steps\n")
    log(f"{len(ids)} active processes with {args.release} each")


def run_wrk(args, paths_file, method, body, token, threads, connections, seconds, out):
    lua = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk.lua")
    env = dict(os.environ)
    env.update(
        BENCH_PATHS=paths_file,
        BENCH_METHOD=method,
        BENCH_BODY=body or "",
        BENCH_TOKEN=token or "",
        BENCH_OUT=out,
    )
    command = [
        "wrk",
        "-t", str(threads),
        "-c", str(connections),
        "-d", f"{seconds}s",
        "--timeout", "10s",
        "-s", lua,
        args.url,
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    CHILDREN.append(process)
    return process


def wrk_result(process, out, seconds):
    try:
        output, _ = process.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        fail("wrk did not finish in time")
    if process.returncode != 0 or not os.path.exists(out):
        fail(f"wrk failed ({process.returncode}):\n{output.decode(errors='replace')[-2000:]}")
    with open(out) as file:
        return json.load(file)


def cmd_wrk(args):
    """A closed-loop load with wrk: `threads` threads, `connections` keep-alive connections,
    thread i on the i-th path of the paths file (so threads == connections gives one path
    per connection). Records requests/s answered with the expected status."""
    record = Recorder(args)
    token = open(args.token_file).read().strip() if args.token_file else ""
    out = args.out or f"/tmp/bench-wrk-{os.getpid()}.json"
    before = {}
    if args.pid:
        before["cpu"] = cpu_ticks(args.pid)
    if args.admin:
        before["queued"] = queued(args.url, args.admin)
    process = run_wrk(
        args, args.paths, args.method, args.body, token, args.threads,
        args.connections, args.seconds, out,
    )
    result = wrk_result(process, out, args.seconds)
    after = {}
    if args.pid:
        after["cpu"] = cpu_ticks(args.pid)
    if args.admin:
        after["queued"] = queued(args.url, args.admin)
    seconds = result["duration_us"] / 1e6
    good = result["statuses"].get(str(args.expect), 0)
    bad = result["requests"] - good
    rate = good / seconds if seconds > 0 else 0.0
    name = args.name
    summary = {
        "name": name,
        "rate": round(rate, 1),
        "ok": good,
        "other": bad,
        "statuses": result["statuses"],
        "errors": result["errors"],
        "latency_ms": {k: v / 1000 for k, v in result["latency_us"].items()},
    }
    note = ""
    if bad:
        note = f"{bad} of {result['requests']} answers were not {args.expect}: {result['statuses']}"
        log(f"WARNING {name}: {note}")
    record(name, rate, note)
    if args.pid and good:
        cpu_us = (after["cpu"] - before["cpu"]) / CLK_TCK * 1e6 / good
        summary["cpu_us_per_step"] = round(cpu_us, 1)
        record(f"{name}_cpu_us", cpu_us)
    if args.admin:
        growth = (after["queued"] - before["queued"]) / seconds
        summary["backlog_end"] = after["queued"]
        summary["backlog_growth_per_s"] = round(growth, 1)
        record(f"{name}_backlog_end", after["queued"])
        record(f"{name}_backlog_growth", growth)
        # Delivery keeps up when what is left at the end is under one second of production.
        messages_per_s = 2 * rate
        keeps_up = after["queued"] <= max(messages_per_s, 2 * args.connections)
        record(f"{name}_keeps_up", 1 if keeps_up else 0)
    if args.drain_timeout and args.admin:
        first, remaining, drain_s = wait_drained(args.url, args.admin, args.drain_timeout)
        summary["drain"] = {"backlog": first, "remaining": remaining, "seconds": round(drain_s, 2)}
        if first >= 100:
            drained = first - remaining
            rate_drain = drained / drain_s if drain_s > 0 else 0.0
            note = "" if remaining == 0 else f"not caught up after {args.drain_timeout} s: {remaining} left"
            record(f"{name}_drain_rate", rate_drain, note)
            record(f"{name}_drain_s", drain_s, note)
            summary["drain"]["rate"] = round(rate_drain, 1)
        else:
            record(f"{name}_drain_rate", "", f"backlog {first} too small to time a drain")
        if args.pid and good:
            cpu_all = (cpu_ticks(args.pid) - before["cpu"]) / CLK_TCK * 1e6 / good
            summary["cpu_us_per_step_incl_drain"] = round(cpu_all, 1)
            record(
                f"{name}_cpu_us_incl_drain",
                cpu_all,
                "" if remaining == 0 else "drain not finished",
            )
    print(json.dumps(summary))


def cmd_drain(args):
    """Waits (bounded) until the outbox has nothing queued."""
    first, remaining, seconds = wait_drained(args.url, args.admin, args.timeout)
    print(json.dumps({"backlog": first, "remaining": remaining, "seconds": round(seconds, 2)}))
    if remaining:
        log(f"WARNING: {remaining} messages still queued after {args.timeout} s")


def cmd_outbox(args):
    """Prints how many outbox messages have `status` (all counts as JSON without it)."""
    outbox, processes = metrics(args.url, args.admin)
    if args.status:
        print(outbox.get(args.status, 0))
    else:
        print(json.dumps({"outbox": outbox, "processes": processes}))


# --- Open-loop latency ------------------------------------------------------------------


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def open_loop(args, paths, token):
    loop = asyncio.get_running_loop()
    host = urllib.parse.urlsplit(args.url)
    body = args.body.encode()
    queue = asyncio.Queue()
    latencies, statuses, late = [], {}, [0]

    async def connect(path):
        reader, writer = await asyncio.open_connection(host.hostname, host.port)
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {host.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        return reader, writer, request

    async def connection(reader, writer, request):
        while True:
            intended = await queue.get()
            if intended is None:
                writer.close()
                return
            sent = loop.time()
            if sent - intended > 0.001:
                late[0] += 1
            writer.write(request)
            status = await read_response(reader)
            latencies.append(loop.time() - intended)
            statuses[status] = statuses.get(status, 0) + 1

    # Every connection is open before the clock starts.
    opened = await asyncio.wait_for(
        asyncio.gather(*(connect(paths[i % len(paths)]) for i in range(args.connections))),
        timeout=60,
    )
    workers = [asyncio.create_task(connection(*parts)) for parts in opened]
    interval = 1.0 / args.rate
    start = loop.time()
    end = start + args.seconds
    scheduled = 0
    while True:
        now = loop.time()
        due = start + scheduled * interval
        if due >= end:
            break
        while due <= now and due < end:
            queue.put_nowait(due)
            scheduled += 1
            due = start + scheduled * interval
        await asyncio.sleep(max(0.0, due - loop.time()))
    for _ in workers:
        queue.put_nowait(None)
    try:
        await asyncio.wait_for(asyncio.gather(*workers), timeout=args.seconds + 60)
    except asyncio.TimeoutError:
        for worker in workers:
            worker.cancel()
    elapsed = loop.time() - start
    return latencies, statuses, scheduled, elapsed, late[0]


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


def cmd_openloop(args):
    """Sends steps at a fixed rate, whatever the answers' pace (open loop): each request has
    an intended send time on a fixed schedule, and its latency counts from that time, so
    requests that wait for a free connection count their wait (no coordinated omission)."""
    record = Recorder(args)
    token = open(args.token_file).read().strip()
    paths = [line.strip() for line in open(args.paths) if line.strip()]
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    latencies, statuses, scheduled, elapsed, late = asyncio.run(open_loop(args, paths, token))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies.sort()
    ms = lambda p: percentile(latencies, p) * 1000  # noqa: E731
    good = statuses.get(args.expect, 0)
    problems = []
    if len(latencies) < scheduled:
        problems.append(f"{scheduled - len(latencies)} of {scheduled} requests unanswered")
    if good != len(latencies):
        problems.append(f"statuses {statuses}")
    if late > 0.01 * max(1, scheduled):
        problems.append(f"{late} of {scheduled} sent over 1 ms late (all connections busy, or the client saturated)")
    note = "; ".join(problems)
    result = {
        "target_rate": args.rate,
        "achieved_rate": round(len(latencies) / elapsed, 1) if elapsed else 0,
        "p50_ms": round(ms(50), 3),
        "p99_ms": round(ms(99), 3),
        "p999_ms": round(ms(99.9), 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
        "statuses": statuses,
        "late_sends": late,
        "client_cpu_s": round(client_cpu, 2),
    }
    record(f"{args.name}_p50_ms", ms(50))
    record(f"{args.name}_p99_ms", ms(99), note)
    record(f"{args.name}_p999_ms", ms(99.9))
    record(f"{args.name}_rate", result["achieved_rate"])
    print(json.dumps(result))


# --- Many open processes ----------------------------------------------------------------


def cmd_open_many(args):
    """Opens processes with wrk (64 connections) as fast as the daemon takes them, until the
    daemon's /metrics counts `count` open ones; then reads the daemon's RSS."""
    record = Recorder(args)
    token = open(args.token_file).read().strip()
    paths = f"{args.out}.paths"
    with open(paths, "w") as file:
        file.write("/v1/processes\n")
    body = json.dumps(
        {"customer": {"msisdn": args.msisdn}, "currency": "EUR", "release": "0.01",
         "top_up": {"policy": "none"}}
    )
    start_count = sum(metrics(args.url, args.admin)[1].values())
    started = time.monotonic()
    process = run_wrk(args, paths, "POST", body, token, 2, 64, args.timeout, args.out)
    count, peak_rss = start_count, 0
    try:
        while time.monotonic() - started < args.timeout + 5 and process.poll() is None:
            time.sleep(1.0)
            _, processes = metrics(args.url, args.admin)
            count = processes.get("awaiting_confirmation", 0) + processes.get("active", 0)
            peak_rss = max(peak_rss, rss_kib(args.pid))
            if count >= args.count:
                break
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    elapsed = time.monotonic() - started
    rss = rss_kib(args.pid) / 1024
    hwm = rss_kib(args.pid, "VmHWM") / 1024
    note = "" if count >= args.count else f"{count} open, short of {args.count} after {args.timeout} s"
    record("rss_open_mib", rss, note)
    record("rss_open_hwm_mib", hwm)
    record("open_processes", count)
    record("open_rate", (count - start_count) / elapsed)
    print(json.dumps({"open": count, "seconds": round(elapsed, 1), "rss_mib": round(rss, 1), "hwm_mib": round(hwm, 1)}))


# --- SMS --------------------------------------------------------------------------------


def smsc_stats(smsc):
    status, body = get_status(f"{smsc}/stats", timeout=5)
    if status != 200:
        raise RuntimeError(f"SMSC /stats: {status}")
    return json.loads(body)


def smsc_post(smsc, path):
    connection = Http(smsc)
    try:
        return connection.json("POST", path, {})
    finally:
        connection.close()


def cmd_sms_customers(args):
    """A retailer and `count` customers who prefer SMS (no credit needed to be asked)."""
    main = Http(args.url)
    retailer = main.json("POST", "/admin/v1/retailers", {"name": "Bench SMS"}, args.admin)
    msisdns = [f"+49171{args.msisdn_base + i:07d}" for i in range(args.count)]
    connections = [Http(args.url) for _ in range(args.concurrency)]

    def create(index, item):
        connections[index].json(
            "POST",
            "/admin/v1/customers",
            {"name": f"Bench SMS {item}", "msisdn": msisdns[item], "preferred_channel": "sms"},
            args.admin,
        )

    parallel(args.count, args.concurrency, create)
    with open(args.out_key, "w") as file:
        file.write(retailer["api_key"])
    with open(args.out_msisdns, "w") as file:
        file.write("\n".join(msisdns) + "\n")
    log(f"{args.count} customers who prefer SMS")


def sms_sender(args, token, text_spec):
    """Returns send(http, msisdn) for the kind under test."""
    if args.kind == "paystep":

        def send(http_, msisdn):
            status, data = http_.request(
                "POST",
                "/v1/processes",
                {"customer": {"msisdn": msisdn}, "currency": "EUR", "release": "5.00"},
                {"Authorization": f"Bearer {token}"},
            )
            if status != 201:
                raise RuntimeError(f"opening a process: {status} {data[:300]!r}")

        return send

    text = text_spec["text"]
    coding = "2" if text_spec.get("data_coding") == 8 else "0"

    def send(http_, msisdn):
        query = urllib.parse.urlencode(
            {"username": "bench", "password": "bench", "from": "12345", "to": msisdn,
             "text": text, "charset": "UTF-8", "coding": coding}
        )
        status, data = http_.request("GET", f"/cgi-bin/sendsms?{query}")
        if status not in (200, 202):
            raise RuntimeError(f"Kannel sendsms: {status} {data[:300]!r}")

    return send


def wait_stable_submits(smsc, at_least, timeout, quiet=1.0):
    """Waits until the SMSC has at least `at_least` submits and no new one for `quiet` s."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = smsc_stats(smsc)["submits"]
        if count != last:
            last, last_change = count, time.monotonic()
        elif count >= at_least and time.monotonic() - last_change >= quiet:
            return count
        time.sleep(0.05)
    fail(f"the SMSC had {last} submits, expected at least {at_least}, within {timeout} s")


def cmd_sms_warmup(args):
    """Sends one message, waits until its parts reached the SMSC, and writes what arrived
    (parts, text, data_coding) so that the burst knows how many submits a message makes."""
    token = open(args.token_file).read().strip() if args.token_file else ""
    text_spec = json.load(open(args.text_file)) if args.text_file and os.path.exists(args.text_file) else {
        "text": "Bench: confirm the release of EUR 5.00 at http://127.0.0.1/c/" + "x" * 43
    }
    before = smsc_stats(args.smsc)["submits"]
    msisdn = open(args.msisdns).readline().strip() if args.msisdns else "+4917199999999"
    send = sms_sender(args, token, text_spec)
    connection = Http(args.url)
    send(connection, msisdn)
    after = wait_stable_submits(args.smsc, before + 1, args.timeout)
    status, body = get_status(f"{args.smsc}/submits", timeout=10)
    records = json.loads(body)[before:after]
    records.sort(key=lambda r: (r.get("concatenation") or {}).get("sequence", 0))
    spec = {
        "parts": after - before,
        "text": "".join(r.get("text") or "" for r in records),
        "data_coding": records[0].get("data_coding") if records else 0,
    }
    with open(args.out, "w") as file:
        json.dump(spec, file)
    log(f"one {args.kind} message = {spec['parts']} submit(s), {len(spec['text'])} characters")


def cmd_sms_burst(args):
    """Opens `count` requests (paystep processes or Kannel sendsms calls) from `concurrency`
    clients and times from the first request to the SMSC counting all their submits."""
    record = Recorder(args)
    token = open(args.token_file).read().strip() if args.token_file else ""
    text_spec = json.load(open(args.text_file)) if args.text_file else {"text": "x"}
    parts = json.load(open(args.warmup))["parts"]
    msisdns = [line.strip() for line in open(args.msisdns) if line.strip()]
    if args.kind == "paystep":
        msisdns = msisdns[1:]  # the first one had the warm-up
    if len(msisdns) < args.count:
        msisdns = (msisdns * (args.count // max(1, len(msisdns)) + 1))
    msisdns = msisdns[: args.count]
    smsc_post(args.smsc, "/stats/reset")
    baseline = smsc_stats(args.smsc)["submits"]
    target = baseline + parts * args.count
    send = sms_sender(args, token, text_spec)
    connections = [Http(args.url) for _ in range(args.concurrency)]
    api_done = [None]
    errors = []

    def sender():
        try:
            parallel(len(msisdns), args.concurrency, lambda i, item: send(connections[i], msisdns[item]))
        except Exception as error:  # noqa: BLE001
            errors.append(error)
        api_done[0] = time.monotonic()

    started = time.monotonic()
    thread = threading.Thread(target=sender)
    thread.start()
    submits = baseline
    while time.monotonic() - started < args.timeout:
        submits = smsc_stats(args.smsc)["submits"]
        if submits >= target or errors:
            break
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    thread.join(timeout=args.timeout)
    if errors:
        fail(f"{args.kind}: {errors[0]}")
    stats = smsc_stats(args.smsc)
    reached = (submits - baseline) / parts
    rate = reached / elapsed
    note = ""
    if submits < target:
        note = f"only {reached:.0f} of {args.count} messages ({parts} part(s) each) arrived within {args.timeout} s"
    api_rate = args.count / (api_done[0] - started) if api_done[0] else 0
    record(args.name, rate, note)
    record(f"{args.name}_api_rate", api_rate)
    record(f"{args.name}_max_in_flight", stats["max_in_flight"])
    print(json.dumps({"messages_per_s": round(rate, 1), "seconds": round(elapsed, 2),
                      "api_per_s": round(api_rate, 1), "max_in_flight": stats["max_in_flight"],
                      "max_per_second": stats["max_per_second"], "parts": parts}))


# --- Limits: raw SQLite, pgbench --------------------------------------------------------


def cmd_rawsqlite(args):
    """One UPDATE per transaction, sequentially on one connection, WAL, synchronous=FULL."""
    record = Recorder(args)
    path = os.path.join(args.dir, "raw.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    db.executemany("INSERT INTO accounts VALUES (?, 0)", ((i,) for i in range(1, 1001)))
    mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = db.execute("PRAGMA synchronous").fetchone()[0]
    if mode != "wal" or sync != 2:
        fail(f"SQLite is in journal_mode={mode}, synchronous={sync}; wanted wal and 2 (FULL)")
    count = 0
    started = time.monotonic()
    deadline = started + args.seconds
    while time.monotonic() < deadline:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?", (count % 1000 + 1,))
        db.execute("COMMIT")
        count += 1
    elapsed = time.monotonic() - started
    db.close()
    rate = count / elapsed
    record("sqlite_raw_tps", rate)
    print(json.dumps({"tx_per_s": round(rate, 1), "transactions": count, "sqlite": sqlite3.sqlite_version}))


def cmd_pgbench(args):
    record = Recorder(args)
    command = [
        "pgbench", "-n", "-b", "simple-update", "-c", str(args.clients),
        "-j", str(args.threads), "-T", str(args.seconds), args.dburl,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds + 120)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    if done.returncode != 0 or not match:
        fail(f"pgbench failed ({done.returncode}):\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    tps = float(match.group(1))
    latency = re.search(r"latency average = ([0-9.]+) ms", done.stdout)
    record("pgbench_tps", tps)
    print(json.dumps({"tps": tps, "latency_avg_ms": float(latency.group(1)) if latency else None}))


# --- Waiting ----------------------------------------------------------------------------


def cmd_wait_http(args):
    """Waits until a GET answers `status` (and its body contains `contains`)."""
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, body = get_status(args.url, timeout=2)
            text = body.decode(errors="replace")
            if status == args.status and args.contains in text:
                return
            last = f"{status} {text[:200]!r}"
        except OSError as error:
            last = str(error)
        time.sleep(0.1)
    fail(f"{args.url} did not answer as expected within {args.timeout} s (last: {last})")


def cmd_record(args):
    """Appends one figure to the raw CSV."""
    Recorder(args)(args.figure, args.value, args.note)


def cmd_value(args):
    """Prints the value of one figure of one run (empty if there is none)."""
    with open(args.csv) as file:
        for row in csv.reader(file):
            if row[:3] == [args.run, args.db, args.figure] and row[3] != "":
                print(row[3])
                return
    print("")


# ---------------------------------------------------------------------------------------
# Report

FIGURES = [
    # (id, label, unit, per-database?, digits)
    ("healthz_rps", "`/healthz` (wrk, 64 connections)", "req/s", False, 0),
    ("sqlite_raw_tps", "raw SQLite, one UPDATE per transaction (WAL, synchronous=FULL, sequential)", "tx/s", False, 0),
    ("pgbench_tps", "`pgbench -b simple-update`, 64 clients", "tps", False, 0),
    ("steps_c64", "steps/s, 64 connections on 64 processes, delivery on", "steps/s", True, 0),
    ("steps_c64_off", "steps/s, 64 connections on 64 processes, delivery off", "steps/s", True, 0),
    ("steps_1p", "steps/s, 64 connections on 1 process, delivery on", "steps/s", True, 0),
    ("steps_1p_off", "steps/s, 64 connections on 1 process, delivery off", "steps/s", True, 0),
    ("steps_c1", "steps/s, 1 connection on 1 process, delivery on", "steps/s", True, 0),
    ("steps_c4", "steps/s, 4 connections on 4 processes, delivery on", "steps/s", True, 0),
    ("steps_c16", "steps/s, 16 connections on 16 processes, delivery on", "steps/s", True, 0),
    ("steps_c64_backlog_end", "outbox backlog at the end of the 64-connection load", "messages", True, 0),
    ("steps_c64_backlog_growth", "outbox backlog growth during that load", "msg/s", True, 0),
    ("steps_c64_drain_rate", "outbox drain after that load", "msg/s", True, 0),
    ("steps_c64_drain_s", "time to drain it", "s", True, 1),
    ("lat_rate", "latency run: achieved rate (target: half the 64-connection rate)", "steps/s", True, 0),
    ("lat_p50_ms", "step latency p50 at half the maximum rate", "ms", True, 2),
    ("lat_p99_ms", "step latency p99 at half the maximum rate", "ms", True, 2),
    ("lat_p999_ms", "step latency p99.9 at half the maximum rate", "ms", True, 2),
    ("steps_c64_cpu_us_incl_drain", "daemon CPU per step, delivery on (load and drain)", "µs", True, 0),
    ("steps_c64_cpu_us", "daemon CPU per step, delivery on (during the load only)", "µs", True, 0),
    ("steps_c64_off_cpu_us", "daemon CPU per step, delivery off", "µs", True, 0),
    ("rss_idle_mib", "RSS idle (just started, migrated)", "MiB", True, 1),
    ("rss_open_mib", "RSS with the open processes below", "MiB", True, 1),
    ("open_processes", "open processes (awaiting confirmation) at that point", "processes", True, 0),
    ("open_rate", "processes opened per second while filling", "processes/s", True, 0),
    ("startup_ms", "start-up, launch to first 200 from `/readyz` (fresh database)", "ms", True, 0),
    ("sms_d0", "SMS confirmation requests into the SMSC simulator, answering at once", "SMS/s", True, 0),
    ("sms_d0_max_in_flight", "submits in flight at most, answering at once", "submits", True, 0),
    ("sms_d20", "SMS confirmation requests, SMSC answering after 20 ms", "SMS/s", True, 0),
    ("sms_d20_max_in_flight", "submits in flight at most, answering after 20 ms", "submits", True, 0),
    ("kannel_d0", "Kannel sendsms into the same simulator, answering at once", "SMS/s", False, 0),
    ("kannel_d0_max_in_flight", "Kannel: submits in flight at most, at once", "submits", False, 0),
    ("kannel_d20", "Kannel sendsms, SMSC answering after 20 ms", "SMS/s", False, 0),
    ("kannel_d20_max_in_flight", "Kannel: submits in flight at most, after 20 ms", "submits", False, 0),
]

DATABASES = ["sqlite", "postgres"]
DB_LABEL = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def load_raw(path):
    values, notes = {}, {}
    with open(path) as file:
        for row in csv.reader(file):
            if len(row) < 5 or row[0] == "run":
                continue
            run, database, figure, value, note = row[:5]
            key = (database, figure)
            if note:
                notes.setdefault(key, []).append(f"run {run}: {note}")
            if value == "":
                continue
            values.setdefault(key, []).append(float(value))
    return values, notes


def fmt(value, digits):
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def cmd_report(args):
    values, notes = load_raw(args.csv)
    median = lambda key: statistics.median(values[key]) if values.get(key) else None  # noqa: E731
    lines = []
    lines.append("| figure | SQLite | PostgreSQL | either | unit | runs |")
    lines.append("|---|---|---|---|---|---|")
    # Messages delivered while delivery was meant to be off (see BENCHMARKS.md).
    leaked = {db: sum(values.get((db, "off_delivered"), [])) for db in DATABASES}
    leak_label = " (but delivery was not off: see the notes)"
    for figure, label, unit, per_db, digits in FIGURES:
        if per_db and "_off" in figure and any(leaked.values()):
            label += leak_label
        if per_db:
            cells = [fmt(median((db, figure)), digits) for db in DATABASES] + [""]
            runs = "; ".join(
                f"{DB_LABEL[db]}: " + " / ".join(fmt(v, digits) for v in values.get((db, figure), []))
                for db in DATABASES if values.get((db, figure))
            )
            if all(cell in ("–", "") for cell in cells):
                continue
        else:
            if not values.get(("-", figure)):
                continue
            cells = ["", "", fmt(median(("-", figure)), digits)]
            runs = " / ".join(fmt(v, digits) for v in values.get(("-", figure), []))
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | {unit} | {runs} |")
    figures_table = "\n".join(lines)

    def ratio(a, b):
        return a / b if a is not None and b not in (None, 0) else None

    healthz = median(("-", "healthz_rps"))
    raw = median(("-", "sqlite_raw_tps"))
    pgbench = median(("-", "pgbench_tps"))
    rows = []

    def verdict(value, target, higher_is_better=True):
        if value is None:
            return "not measured"
        ok = value >= target if higher_is_better else value < target
        if ok:
            return "met"
        if higher_is_better:
            return f"missed ({target / value:.1f}× short)" if value > 0 else "missed"
        return f"missed ({value / target:.1f}× over)"

    for db in DATABASES:
        label = DB_LABEL[db]
        on = median((db, "steps_c64"))
        off = median((db, "steps_c64_off"))
        if on is None and off is None:
            continue
        r_on, r_off = ratio(on, healthz), ratio(off, healthz)
        off_label = "delivery off" + (" (not achieved: see the notes)" if leaked.get(db) else "")
        target = 0.25 if db == "sqlite" else None
        rows.append((f"{label} steps/s ÷ `/healthz` req/s, delivery on", r_on, 3,
                     "≥ 0.25" if target else "", verdict(r_on, 0.25) if target else ""))
        rows.append((f"{label} steps/s ÷ `/healthz` req/s, {off_label}", r_off, 3,
                     "≥ 0.25" if target else "", verdict(r_off, 0.25) if target else ""))
        if db == "sqlite":
            rows.append(("SQLite steps/s ÷ raw SQLite tx/s, delivery on", ratio(on, raw), 3, "", ""))
            rows.append((f"SQLite steps/s ÷ raw SQLite tx/s, {off_label}", ratio(off, raw), 3, "", ""))
        else:
            rows.append(("PostgreSQL steps/s ÷ pgbench tps, delivery on", ratio(on, pgbench), 3,
                         "≥ 2", verdict(ratio(on, pgbench), 2)))
            rows.append((f"PostgreSQL steps/s ÷ pgbench tps, {off_label}", ratio(off, pgbench), 3,
                         "≥ 2", verdict(ratio(off, pgbench), 2)))
        keeps = values.get((db, "steps_c64_keeps_up"))
        if keeps:
            kept = all(v == 1 for v in keeps)
            growth = median((db, "steps_c64_backlog_growth"))
            rows.append((f"{label}: delivery keeps up at the maximum step rate (backlog growth msg/s)",
                         growth, 0, "backlog does not grow",
                         "met" if kept else f"missed in {sum(1 for v in keeps if v != 1)} of {len(keeps)} runs"))
        p99 = median((db, "lat_p99_ms"))
        rows.append((f"{label} step latency p99 at half the maximum rate (ms)", p99, 2, "< 10 ms",
                     verdict(p99, 10, higher_is_better=False)))
        cpu = median((db, "steps_c64_cpu_us_incl_drain"))
        rows.append((f"{label} daemon CPU per step, delivery on, load and drain (µs)", cpu, 0, "≤ 150 µs",
                     "met" if cpu is not None and cpu <= 150 else verdict(cpu, 150, higher_is_better=False)))
        rss = median((db, "rss_open_mib"))
        count = median((db, "open_processes"))
        if rss is not None:
            full = count is not None and count >= 100_000
            rows.append((f"{label} RSS with {fmt(count, 0)} open processes (MiB)", rss, 1,
                         "< 100 MB (95.4 MiB) at 100,000",
                         verdict(rss, 100e6 / 2**20, higher_is_better=False) if full
                         else "n/a: fewer than 100,000 open"))
        for delay in ("d0", "d20"):
            ours = median((db, f"sms_{delay}"))
            kannel = median(("-", f"kannel_{delay}"))
            if ours is None and kannel is None:
                continue
            r = ratio(ours, kannel)
            when = "at once" if delay == "d0" else "after 20 ms"
            rows.append((f"{label} SMS/s ÷ Kannel SMS/s, SMSC answering {when}", r, 2, "≥ 1",
                         verdict(r, 1)))
    ratio_lines = ["| ratio or target | value | target | verdict |", "|---|---|---|---|"]
    if not rows:
        ratio_lines = ["(none: no paystep figure was measured)"]
    for label, value, digits, target, result in rows:
        if value is None and not target:
            continue
        ratio_lines.append(f"| {label} | {fmt(value, digits)} | {target} | {result} |")
    ratios_table = "\n".join(ratio_lines)

    note_lines = []
    for (db, figure), texts in sorted(notes.items()):
        for text in texts:
            note_lines.append(f"- {DB_LABEL.get(db, 'both')} `{figure}`, {text}")
    if args.notes and os.path.exists(args.notes):
        note_lines = [line.rstrip() for line in open(args.notes) if line.strip()] + note_lines
    note_lines = list(dict.fromkeys(note_lines))

    plot_note = ""
    if args.plot and any(values.get((db, f"steps_c{c}")) for db in DATABASES for c in (1, 4, 16, 64)):
        plot_note = make_plot(args, values)

    section = [f"## {args.title}", ""]
    if args.header and os.path.exists(args.header):
        section += [open(args.header).read().rstrip(), ""]
    section += ["### Figures (medians; every run's value in the last column)", "", figures_table, ""]
    section += ["### Ratios and the targets of issue 9 (ratios of medians)", "", ratios_table, ""]
    if plot_note:
        section += [plot_note, ""]
    if note_lines:
        section += ["### Notes", ""] + note_lines + [""]
    text = "\n".join(section) + "\n"
    print(text)
    if args.out:
        new = not os.path.exists(args.out)
        with open(args.out, "a") as file:
            if new:
                file.write(f"# paystep benchmark runs of {args.date}\n\nWritten by `scripts/bench.sh`; "
                           "see BENCHMARKS.md for the method.\n\n")
            file.write(text)


def make_plot(args, values):
    rows = []
    for connections in (1, 4, 16, 64):
        figure = f"steps_c{connections}"
        row = [str(connections)]
        for db in DATABASES:
            runs = values.get((db, figure))
            row.append(f"{statistics.median(runs):.1f}" if runs else "NaN")
        rows.append(row)
    data = args.plot + ".dat"
    with open(data, "w") as file:
        file.write("# connections sqlite postgres (steps/s, medians, delivery on)\n")
        for row in rows:
            file.write(" ".join(row) + "\n")
    terminals = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    terminal = "pngcairo size 900,560" if "pngcairo" in terminals.stdout + terminals.stderr else "png size 900,560"
    script = f"""
set terminal {terminal}
set output '{args.plot}'
set title 'paystep durable steps/s against connections (one process per connection, delivery on)'
set xlabel 'connections (wrk)'
set ylabel 'steps/s (median of runs)'
set logscale x 2
set xtics (1, 4, 16, 64)
set xrange [0.8:80]
set yrange [0:*]
set grid
set key left top
plot '{data}' using 1:2 with linespoints lw 2 pt 7 title 'SQLite', \\
     '{data}' using 1:3 with linespoints lw 2 pt 5 title 'PostgreSQL'
"""
    done = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
    if done.returncode != 0:
        return f"(gnuplot failed: {done.stderr.strip()[:300]})"
    return f"![steps/s against connections]({os.path.basename(args.plot)})"


# ---------------------------------------------------------------------------------------


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("free-port")
    p.add_argument("--count", type=int, default=1)
    p.set_defaults(func=cmd_free_port)

    p = sub.add_parser("launch")
    add_record_arguments(p)
    p.add_argument("--pidfile", required=True)
    p.add_argument("--stdout", required=True)
    p.add_argument("--stderr", required=True)
    p.add_argument("--cwd", default=".")
    p.add_argument("--ready", required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--figures", action="store_true", help="record startup_ms and rss_idle_mib")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- the daemon's command line")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("setup")
    p.add_argument("--url", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--console", required=True)
    p.add_argument("--processes", type=int, default=65)
    p.add_argument("--release", default="9000.00")
    p.add_argument("--deposit", default="10000.00")
    p.add_argument("--msisdn-base", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--out-key", required=True)
    p.add_argument("--out-paths", required=True)
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("wrk")
    add_record_arguments(p)
    p.add_argument("--url", required=True)
    p.add_argument("--paths", required=True)
    p.add_argument("--method", default="GET")
    p.add_argument("--body", default="")
    p.add_argument("--token-file")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--seconds", type=int, required=True)
    p.add_argument("--expect", type=int, default=200)
    p.add_argument("--name", required=True)
    p.add_argument("--pid", type=int)
    p.add_argument("--admin")
    p.add_argument("--drain-timeout", type=float, default=0)
    p.add_argument("--out")
    p.set_defaults(func=cmd_wrk)

    p = sub.add_parser("drain")
    p.add_argument("--url", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--timeout", type=float, required=True)
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("outbox")
    p.add_argument("--url", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--status")
    p.set_defaults(func=cmd_outbox)

    p = sub.add_parser("openloop")
    add_record_arguments(p)
    p.add_argument("--url", required=True)
    p.add_argument("--paths", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--body", default='{"amount":"0.01"}')
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--expect", type=int, default=201)
    p.add_argument("--name", default="lat")
    p.set_defaults(func=cmd_openloop)

    p = sub.add_parser("open-many")
    add_record_arguments(p)
    p.add_argument("--url", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--msisdn", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_open_many)

    p = sub.add_parser("sms-customers")
    p.add_argument("--url", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--msisdn-base", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--out-key", required=True)
    p.add_argument("--out-msisdns", required=True)
    p.set_defaults(func=cmd_sms_customers)

    for name, func in (("sms-warmup", cmd_sms_warmup), ("sms-burst", cmd_sms_burst)):
        p = sub.add_parser(name)
        add_record_arguments(p)
        p.add_argument("--kind", choices=["paystep", "kannel"], required=True)
        p.add_argument("--url", required=True, help="paystep's base URL or Kannel's sendsms URL")
        p.add_argument("--smsc", required=True, help="the simulator's HTTP control URL")
        p.add_argument("--token-file")
        p.add_argument("--msisdns")
        p.add_argument("--text-file")
        p.add_argument("--timeout", type=float, default=120)
        if name == "sms-warmup":
            p.add_argument("--out", required=True)
        else:
            p.add_argument("--warmup", required=True)
            p.add_argument("--count", type=int, required=True)
            p.add_argument("--concurrency", type=int, default=32)
            p.add_argument("--name", required=True)
        p.set_defaults(func=func)

    p = sub.add_parser("rawsqlite")
    add_record_arguments(p)
    p.add_argument("--dir", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.set_defaults(func=cmd_rawsqlite)

    p = sub.add_parser("pgbench")
    add_record_arguments(p)
    p.add_argument("--dburl", required=True)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=int, required=True)
    p.set_defaults(func=cmd_pgbench)

    p = sub.add_parser("wait-http")
    p.add_argument("--url", required=True)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--contains", default="")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=cmd_wait_http)

    p = sub.add_parser("record")
    add_record_arguments(p)
    p.add_argument("--figure", required=True)
    p.add_argument("--value", required=True)
    p.add_argument("--note", default="")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("value")
    p.add_argument("csv")
    p.add_argument("run")
    p.add_argument("db")
    p.add_argument("figure")
    p.set_defaults(func=cmd_value)

    p = sub.add_parser("report")
    p.add_argument("--csv", required=True)
    p.add_argument("--out")
    p.add_argument("--plot")
    p.add_argument("--title", required=True)
    p.add_argument("--date", default="")
    p.add_argument("--header")
    p.add_argument("--notes")
    p.set_defaults(func=cmd_report)

    args = parser.parse_args()
    if args.command == "launch":
        args.argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not args.argv:
            parser.error("launch needs the daemon's command line after --")
    args.func(args)


if __name__ == "__main__":
    main()
