#!/usr/bin/env python3
"""Hostile-load test of `duo serve` on loopback (ctest serve_hostile): valid requests keep
completing while, at the same time,
  - 150 slow clients send a request head one byte every 2 s (the server's head deadline must
    answer them 408; with a thread per connection they would hold every thread),
  - clients send chunked bodies of 24 MiB and 50 MiB of headers (413 / 431 must come before
    the server has buffered them),
  - clients ask /health with 5,000 ranges (the answer must stay the small whole body),
  - clients start generations and hang up, and others half-close after a complete request
    (those must still get their answer).
Afterwards the server is alive, idle (no sequence, no reserved KV) and its peak memory grew by
less than MEMORY_BOUND_MIB. Prints the latency of the valid requests without and under attack.

Usage: hostile_load.py --duo build/duo [--seconds 15]   (stdlib only; exit 77 when the model is missing)
"""
import argparse
import http.client
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MEMORY_BOUND_MIB = 300  # peak RSS growth allowed during the attack (buffered request data is capped)
SLOW_CLIENTS = 150
VALID = {"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}


class Server:
    def __init__(self, duo, model):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([duo, "serve", "-m", model, "--port", "0", "-t", "2", "--max-body", "1"],
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"http://([\d.]+):(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"duo serve did not start: {line!r} {self.log()}")
        self.addr = (m.group(1), int(m.group(2)))

    def log(self):
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def rss_kib(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection(*self.addr, timeout=timeout)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def metrics(self):
        _, _, body = self.request("GET", "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def valid_requests(server, until, latencies, failures):
    while time.time() < until:
        t0 = time.time()
        try:
            status, _, body = server.request("POST", "/v1/completions", VALID, {"Content-Type": "application/json"})
            if status != 200 or not json.loads(body)["choices"][0]["text"]:
                failures.append(f"valid request: {status} {body[:200]!r}")
        except Exception as e:  # noqa: BLE001 - any failure of a valid request is what we look for
            failures.append(f"valid request: {e!r}")
        latencies.append(time.time() - t0)


def raw(server, data, shut_wr=False, timeout=30):
    """Sends bytes on a fresh connection and returns what comes back until the server closes."""
    c = socket.create_connection(server.addr, timeout=timeout)
    try:
        c.sendall(data)
        if shut_wr:
            c.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            b = c.recv(65536)
            if not b:
                return out
            out += b
    except OSError:
        return out
    finally:
        c.close()


def status_of(resp):
    """The final status of a raw response; interim 1xx answers (a half-closed client is asked
    whether it is still there with a 100 Continue) are skipped as HTTP clients do."""
    while resp.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in resp:
        resp = resp[resp.index(b"\r\n\r\n") + 4:]
    return int(resp[9:12]) if resp.startswith(b"HTTP/1.1 ") and len(resp) >= 12 else -1


def slow_clients(server, until, stats):
    """SLOW_CLIENTS connections, each sending its head one byte every 2 s (one thread)."""
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    sel = selectors.DefaultSelector()
    conns = {}

    def connect():
        c = socket.create_connection(server.addr)
        c.setblocking(False)
        conns[c] = 0
        sel.register(c, selectors.EVENT_READ)

    for _ in range(SLOW_CLIENTS):
        connect()
    next_byte = time.time()
    while time.time() < until:
        for key, _ in sel.select(timeout=0.2):
            c = key.fileobj
            try:
                data = c.recv(4096)
            except OSError:
                data = b""
            if data:
                stats["answers"][status_of(data)] = stats["answers"].get(status_of(data), 0) + 1
            sel.unregister(c)
            c.close()
            del conns[c]
            connect()  # the attacker comes back at once
        if time.time() >= next_byte:
            next_byte += 2.0
            for c in list(conns):
                try:
                    c.send(head[conns[c]:conns[c] + 1])
                    conns[c] += 1
                except OSError:
                    pass
    for c in conns:
        c.close()


def oversized(server, until, stats):
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"  # 1 MiB chunks, 24 of them
    while time.time() < until:
        c = socket.create_connection(server.addr, timeout=30)
        sent = 0
        try:
            c.sendall(b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(24):
                c.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        try:
            stats["chunked"].append((status_of(c.recv(4096)), sent))
        except OSError:
            stats["chunked"].append((-1, sent))
        c.close()
        c = socket.create_connection(server.addr, timeout=30)
        sent = 0
        try:
            c.sendall(b"GET /health HTTP/1.1\r\n")
            line = b"X-Pad: " + b"a" * 4000 + b"\r\n"
            while sent < 50 << 20:
                c.sendall(line)
                sent += len(line)
        except OSError:
            pass
        try:
            stats["headers"].append((status_of(c.recv(4096)), sent))
        except OSError:
            stats["headers"].append((-1, sent))
        c.close()


def ranges_and_disconnects(server, until, stats):
    ranges = "bytes=" + ",".join(f"{i}-{i}" for i in range(5000))
    body = json.dumps({**VALID, "max_tokens": 200})
    while time.time() < until:
        resp = raw(server, f"GET /health HTTP/1.1\r\nRange: {ranges}\r\nConnection: close\r\n\r\n".encode())
        stats["ranges"].append((status_of(resp), len(resp)))
        # Hang-ups: a stream read a little, a plain request left while it generates.
        for stream in (True, False):
            b = json.dumps({**json.loads(body), "stream": stream}).encode()
            c = socket.create_connection(server.addr, timeout=30)
            c.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: "
                      + str(len(b)).encode() + b"\r\n\r\n" + b)
            if stream:
                c.recv(100)
            else:
                time.sleep(0.1)
            c.close()
        # Half-close after a complete request: still answered.
        b = json.dumps(VALID).encode()
        resp = raw(server, b"POST /v1/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: "
                   + str(len(b)).encode() + b"\r\n\r\n" + b, shut_wr=True)
        stats["half_close"].append(status_of(resp))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duo", required=True)
    ap.add_argument("--seconds", type=float, default=15)
    args = ap.parse_args()
    models = os.environ.get("DUO_MODELS", os.path.expanduser("~/.cache/duo/models"))
    model = os.path.join(models, MODEL_FILE)
    if not os.path.exists(model):
        print(f"model missing: {model} (scripts/fetch_models.py)")
        return 1 if os.environ.get("DUO_REQUIRE_MODELS") else 77
    server = Server(os.path.abspath(args.duo), model)
    problems = []
    try:
        # Without attack.
        calm, failures = [], []
        valid_requests(server, time.time() + 4, calm, failures)
        rss_before = server.rss_kib("VmRSS")
        # Under attack.
        stats = {"answers": {}, "chunked": [], "headers": [], "ranges": [], "half_close": []}
        until = time.time() + args.seconds
        attackers = [threading.Thread(target=f, args=(server, until, stats))
                     for f in (slow_clients, oversized, ranges_and_disconnects)]
        for t in attackers:
            t.start()
        time.sleep(1)  # the slow clients are connected
        hot = []
        valid_requests(server, until, hot, failures)
        for t in attackers:
            t.join(timeout=120)
        peak_growth_mib = (server.rss_kib("VmHWM") - rss_before) / 1024
        print(f"valid requests without attack: {len(calm)}, p50 {percentile(calm, 50) * 1000:.0f} ms, "
              f"p99 {percentile(calm, 99) * 1000:.0f} ms")
        print(f"valid requests under attack:   {len(hot)}, p50 {percentile(hot, 50) * 1000:.0f} ms, "
              f"p99 {percentile(hot, 99) * 1000:.0f} ms")
        print(f"slow clients answered: {stats['answers']}; chunked 24 MiB: {stats['chunked'][:3]}; "
              f"50 MiB headers: {stats['headers'][:3]}; ranges: {stats['ranges'][:3]}; "
              f"half-closed: {stats['half_close'][:5]}; peak memory growth {peak_growth_mib:.0f} MiB")
        problems += failures
        if not hot:
            problems.append("no valid request completed under attack")
        if max(hot, default=99) > 30:
            problems.append(f"a valid request took {max(hot):.1f} s under attack")
        if stats["answers"].get(408, 0) == 0:
            problems.append(f"slow clients were not cut off (answers {stats['answers']})")
        if not stats["chunked"] or any(s != 413 or sent >= 24 << 20 for s, sent in stats["chunked"]):
            problems.append(f"oversized chunked bodies: {stats['chunked']}")
        if not stats["headers"] or any(s != 431 or sent >= 50 << 20 for s, sent in stats["headers"]):
            problems.append(f"oversized headers: {stats['headers']}")
        if not stats["ranges"] or any(s != 200 or n > 2000 for s, n in stats["ranges"]):
            problems.append(f"range requests: {stats['ranges']}")
        if not stats["half_close"] or any(s != 200 for s in stats["half_close"]):
            problems.append(f"half-closed clients: {stats['half_close']}")
        if peak_growth_mib > MEMORY_BOUND_MIB:
            problems.append(f"peak memory grew by {peak_growth_mib:.0f} MiB (bound {MEMORY_BOUND_MIB})")
        if not server.alive():
            problems.append("the server died:\n" + server.log())
        else:
            end = time.time() + 30
            while True:
                m = server.metrics()
                if m["duo_active_sequences"] == 0 and m["duo_queue_depth"] == 0 and m["duo_kv_reserved_bytes"] == 0:
                    break
                if time.time() > end:
                    problems.append(f"not idle after the attack: {m}")
                    break
                time.sleep(0.1)
    finally:
        server.stop()
    for p in problems:
        print("FAIL:", p)
    print("hostile load: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
