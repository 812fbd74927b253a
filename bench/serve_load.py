#!/usr/bin/env python3
"""Load test of `duo serve` on loopback: continuous batching against one request at a time.

Starts one `duo serve` (--threads, --kv-type: f16 by default, as llama.cpp's CPU KV cache; the
quality cost on SmolLM2 is in bench/CPU_NOTES.md; --act-bits: 8 by default, int8 activations in
the many-token matmuls as llama.cpp's CPU kernels use, or 16 for duo's exact default) and, in one
run, with that one server:
  1. sequential: one client sends the request mix once through, one request at a time;
  2. batched: --streams clients (default 32) each send requests from the same mix, back to
     back, for --seconds; then waits for the ones in flight.
Every request streams (server-sent events) and asks for its usage. The mix (make_mix) has
prompts and outputs of mixed lengths, and a quarter of the requests use streaming attention
(constant sink + recent cache) so both cache kinds are in use.

Reports generated tokens/s of both phases and their ratio (also per CPU-second of the server,
which other processes on a shared machine disturb less), time to first token, failures
(any non-200 answer or broken stream: must be 0, every request fits the budget), and the KV
memory the server held at most (duo_kv_bytes_peak, checked against --kv-budget) and its peak
resident memory.

  python3 bench/serve_load.py --duo build/duo [--streams 32 --seconds 60 --kv-budget 512 --kv-type f32]
Exit status 1 when a request failed, KV memory exceeded the budget, or the ratio is below
--min-ratio (default 3).
"""
import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"

PASSAGE = ("The river starts high in the mountains, where snow melts into small streams that join and grow as "
           "they fall through forests of pine and birch. In the valley it slows, widens and bends around farms "
           "and villages, carrying boats, timber and the stories of the people who live beside it. ")


def make_mix():
    """16 request specs: mixed prompt lengths (~10 to ~270 tokens) x mixed max_tokens (64 to 256),
    greedy except every fourth (temperature 0.8, top-k 40), and every fourth in streaming
    attention (constant sink + recent cache)."""
    words = (PASSAGE * 40).split()
    lengths = [8, 24, 60, 150, 16, 100, 40, 200]
    gens = [128, 64, 256, 96]
    mix = []
    for i in range(16):
        n = lengths[i % len(lengths)]
        spec = {"model": MODEL_ID, "prompt": " ".join(words[i * 7:i * 7 + n]) + "\n\nContinue the story:",
                "max_tokens": gens[i % len(gens)], "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        if i % 4 == 1:
            spec.update({"temperature": 0.8, "top_k": 40, "seed": i})
        if i % 4 == 3:
            spec.update({"attention": "streaming", "sink": 16, "recent": 112})
        mix.append(spec)
    return mix


class Result:
    __slots__ = ("ok", "tokens", "prompt_tokens", "ttft", "gaps", "seconds", "error")


def stream_request(host, port, spec, timeout=600):
    """One streamed completion: ok, tokens, time to first token and the gaps between the
    arrivals of the streamed pieces after it (inter-token latency)."""
    r = Result()
    r.ok, r.tokens, r.prompt_tokens, r.ttft, r.gaps, r.error = False, 0, 0, None, [], ""
    t0 = time.time()
    last = None
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(spec), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            r.error = f"status {resp.status}: {resp.read()[:200]!r}"
            return r
        done = False
        while True:
            line = resp.fp.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            if "error" in ev:
                r.error = f"stream error: {ev['error']}"
                return r
            if ev.get("choices") and ev["choices"][0]["text"]:
                now = time.time()
                if last is None:
                    r.ttft = now - t0
                else:
                    r.gaps.append(now - last)
                last = now
            if ev.get("usage"):
                r.tokens = ev["usage"]["completion_tokens"]
                r.prompt_tokens = ev["usage"]["prompt_tokens"]
        r.ok = done
        if not done:
            r.error = "stream ended without [DONE]"
    except Exception as e:  # a failed request is counted, not fatal
        r.error = repr(e)
    finally:
        conn.close()
        r.seconds = time.time() - t0
    return r


def metrics(host, port):
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def rss_mib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(name, results, seconds, cpu):
    ok = [r for r in results if r.ok]
    tokens = sum(r.tokens for r in ok)
    ttft = sorted(r.ttft for r in ok if r.ttft is not None)
    med = ttft[len(ttft) // 2] if ttft else float("nan")
    p90 = ttft[int(len(ttft) * 0.9)] if ttft else float("nan")
    print(f"{name:>10}: {len(ok)} requests ok, {len(results) - len(ok)} failed, {tokens} tokens generated, "
          f"{sum(r.prompt_tokens for r in ok)} prompt tokens, {seconds:.1f} s -> {tokens / seconds:.1f} tok/s "
          f"({tokens / cpu:.1f} per server CPU-second); time to first token median {med:.2f} s, p90 {p90:.2f} s")
    return tokens / seconds, tokens / cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duo", default="build/duo")
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--kv-budget", type=float, default=1024, help="MiB")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--kv-type", default="f16",
                    help="the server's KV cache storage (duo serve --kv-type; both phases use it)")
    ap.add_argument("--act-bits", default="8",
                    help="the server's CPU many-token matmul activations, 16 or 8 (duo serve --act-bits; both phases)")
    ap.add_argument("--min-ratio", type=float, default=3.0)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()

    proc = subprocess.Popen([args.duo, "serve", "--port", "0", "-t", args.threads, "--max-batch", str(args.streams),
                             "--max-queue", str(2 * args.streams), "--kv-budget", str(args.kv_budget),
                             "--kv-type", args.kv_type, "--act-bits", args.act_bits],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://([\d.]+):(\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"duo serve did not start: {line!r}")
    host, port = m.group(1), int(m.group(2))
    print(line.strip())
    mix = make_mix()
    failures = []
    try:
        # Warm-up (page in the weights).
        stream_request(host, port, {**mix[0], "max_tokens": 4})

        # 1. Sequential: the whole mix once, one request at a time.
        load0 = os.getloadavg()[0]
        t0, c0 = time.time(), cpu_seconds(proc.pid)
        seq = [stream_request(host, port, spec) for spec in mix]
        seq_s = time.time() - t0
        seq_rate, seq_cpu_rate = summarize("sequential", seq, seq_s, cpu_seconds(proc.pid) - c0)
        failures += [r.error for r in seq if not r.ok]

        # 2. Batched: --streams clients for --seconds.
        results, lock = [], threading.Lock()
        deadline = time.time() + args.seconds
        peak = {"reserved": 0.0, "queued": 0.0, "batch": 0.0}

        def client(c):
            i = c
            while time.time() < deadline:
                r = stream_request(host, port, mix[i % len(mix)])
                i += 1
                with lock:
                    results.append(r)

        def sampler():
            while time.time() < deadline:
                mm = metrics(host, port)
                peak["reserved"] = max(peak["reserved"], mm["duo_kv_reserved_bytes"])
                peak["queued"] = max(peak["queued"], mm["duo_queue_depth"])
                peak["batch"] = max(peak["batch"], mm["duo_batch_sequences"])
                time.sleep(0.5)

        load1 = os.getloadavg()[0]
        t0, c0 = time.time(), cpu_seconds(proc.pid)
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.streams)]
        threads.append(threading.Thread(target=sampler))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bat_s = time.time() - t0
        bat_rate, bat_cpu_rate = summarize("batched", results, bat_s, cpu_seconds(proc.pid) - c0)
        failures += [r.error for r in results if not r.ok]

        mm = metrics(host, port)
        budget = args.kv_budget * 1048576
        ratio = bat_rate / seq_rate if seq_rate > 0 else 0.0
        cpu_ratio = bat_cpu_rate / seq_cpu_rate if seq_cpu_rate > 0 else 0.0
        print(f"     ratio: batched / sequential = {ratio:.2f}x in tokens/s (required >= {args.min_ratio}), "
              f"{cpu_ratio:.2f}x in tokens per server CPU-second")
        print(f"       KV : peak held {mm['duo_kv_bytes_peak'] / 1048576:.1f} MiB, peak reserved "
              f"{peak['reserved'] / 1048576:.1f} MiB, budget {args.kv_budget:.0f} MiB; most sequences in a step "
              f"{peak['batch']:.0f}, deepest queue {peak['queued']:.0f}")
        print(f"   memory : server peak RSS {rss_mib(proc.pid, 'VmHWM'):.0f} MiB")
        print(f"     load : 1-min load average {load0:.2f} before sequential, {load1:.2f} before batched "
              f"({os.cpu_count()} CPUs; other processes share them)")
        if failures:
            print(f"FAILED requests: {len(failures)}; first: {failures[0]}")
        ok = not failures and mm["duo_kv_bytes_peak"] <= budget and peak["reserved"] <= budget and \
            ratio >= args.min_ratio
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"sequential_tok_s": seq_rate, "batched_tok_s": bat_rate, "ratio": ratio,
                           "sequential_tok_per_cpu_s": seq_cpu_rate, "batched_tok_per_cpu_s": bat_cpu_rate,
                           "cpu_ratio": cpu_ratio,
                           "streams": args.streams, "seconds": args.seconds, "failed": len(failures),
                           "requests_sequential": len(seq), "requests_batched": len(results),
                           "kv_peak_bytes": mm["duo_kv_bytes_peak"], "kv_reserved_peak_bytes": peak["reserved"],
                           "kv_budget_bytes": budget, "rss_peak_mib": rss_mib(proc.pid, "VmHWM")}, f, indent=1)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
