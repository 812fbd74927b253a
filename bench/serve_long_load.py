#!/usr/bin/env python3
"""Long-context load on one `duo serve` (the GPU-serving benchmark): many clients with long
prompts at once, with full attention and with duo attention, against the same requests one at
a time.

Starts one server (device options after `--`, e.g. `-- --device cuda`; with --pattern also
`--pattern-file p=PATTERN`), then, in one run:
  1. sequential: --sequential requests one at a time (full attention): the reference rate;
  2. full: --clients clients, each sending requests back to back for --seconds (the requests
     in flight then finish), full attention;
  3. duo: the same with `"attention": "duo", "pattern": "p", "retrieval_ratio": --ratio`.
Prompts are prose of --min-words .. --max-words words (the server reports the tokens), every
request asks for --max-tokens tokens (greedy, with `ignore_eos`, so every request generates
exactly that many: the phases compare equal work).

Reports for each phase: requests done and failed (any non-200 answer or broken stream), prompt
and generated tokens/s, time to first token and inter-token latency (p50 / p99, from the arrival
times of the streamed tokens), and the ratios the GPU-serving issue states targets for: batched
full / sequential generated tokens/s, duo / full generated tokens/s, duo's p99 inter-token
latency against full's.

  python3 bench/serve_long_load.py --duo build/duo -m MODEL --pattern P.tsv --clients 64 \\
      --seconds 40 --max-tokens 512 --json out.json -- --device cuda
Exit status 1 when a request failed.
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import stream_request  # noqa: E402  (one streaming client for both load tests)

WORDS = ("the river carried boats and timber past old mills quiet towns and green fields while people on its "
         "banks told stories of floods harvests markets bridges ferries and the long winters when ice closed "
         "the water and everyone waited for spring").split()


def prose(n, seed):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(rng.choice(WORDS))
        if i % 17 == 16:
            out[-1] += "."
    return " ".join(out)


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def summarize(name, results, seconds):
    ok = [r for r in results if r.ok]
    gen = sum(r.tokens for r in ok)
    prompt = sum(r.prompt_tokens for r in ok)
    ttft = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    s = {"requests": len(ok), "failed": len(results) - len(ok), "seconds": seconds,
         "prompt_tokens": prompt, "generated_tokens": gen,
         "prompt_tok_s": prompt / seconds, "generated_tok_s": gen / seconds,
         "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99),
         "itl_p50": pct(gaps, 0.5), "itl_p99": pct(gaps, 0.99),
         "prompt_tokens_min": min((r.prompt_tokens for r in ok), default=0),
         "prompt_tokens_max": max((r.prompt_tokens for r in ok), default=0)}
    print(f"{name:>10}: {s['requests']} ok, {s['failed']} failed in {seconds:.1f} s | prompts "
          f"{s['prompt_tokens_min']}-{s['prompt_tokens_max']} tokens, {s['prompt_tok_s']:.0f} prompt tok/s | "
          f"{s['generated_tok_s']:.1f} generated tok/s | TTFT p50 {s['ttft_p50']:.2f} s p99 {s['ttft_p99']:.2f} s | "
          f"ITL p50 {1e3 * s['itl_p50']:.1f} ms p99 {1e3 * s['itl_p99']:.1f} ms", flush=True)
    return s


def run_phase(host, port, make_body, clients, seconds):
    results, lock = [], threading.Lock()
    deadline = time.time() + seconds

    def client(c):
        k = 0
        while time.time() < deadline:
            r = stream_request(host, port, make_body(c * 100000 + k), timeout=1800)
            k += 1
            with lock:
                results.append(r)

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duo", default="build/duo")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--pattern", default="", help="gate TSV for the duo phase (no duo phase without it)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--sequential", type=int, default=4, help="requests of the one-at-a-time reference")
    ap.add_argument("--min-words", type=int, default=3600, help="about 4K tokens (Qwen2.5, SmolLM2)")
    ap.add_argument("--max-words", type=int, default=21600, help="about 24K tokens")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--json")
    ap.add_argument("server", nargs="*", help="duo serve options (after --)")
    a = ap.parse_args()

    cmd = [a.duo, "serve", "--port", "0", "-m", a.model, "--model-id", "m", "--max-batch", str(a.clients),
           "--max-queue", str(2 * a.clients), *a.server]
    if a.pattern:
        cmd += ["--pattern-file", f"p={a.pattern}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://([\d.]+):(\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"duo serve did not start: {line!r}")
    host, port = m.group(1), int(m.group(2))
    print(line.strip(), flush=True)

    def body(seed, duo=False):
        rng = random.Random(seed)
        b = {"model": "m", "prompt": prose(rng.randint(a.min_words, a.max_words), seed) + "\nSummarize:",
             "max_tokens": a.max_tokens, "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        if duo:
            b.update({"attention": "duo", "pattern": "p", "retrieval_ratio": a.ratio})
        return b

    out = {"command": cmd, "clients": a.clients, "seconds": a.seconds, "max_tokens": a.max_tokens}
    try:
        stream_request(host, port, {**body(0), "max_tokens": 4})  # warm-up
        t0 = time.time()
        seq = [stream_request(host, port, body(900000 + i)) for i in range(a.sequential)]
        out["sequential"] = summarize("sequential", seq, time.time() - t0)
        res, secs = run_phase(host, port, body, a.clients, a.seconds)
        out["full"] = summarize("full", res, secs)
        failed = out["sequential"]["failed"] + out["full"]["failed"]
        if a.pattern:
            res, secs = run_phase(host, port, lambda s: body(s, duo=True), a.clients, a.seconds)
            out["duo"] = summarize("duo", res, secs)
            failed += out["duo"]["failed"]
        base = out["sequential"]["generated_tok_s"]
        out["batched_vs_sequential"] = out["full"]["generated_tok_s"] / base if base else float("nan")
        print(f"     ratio: batched full / sequential generated tok/s = {out['batched_vs_sequential']:.2f}x")
        if a.pattern and out["full"]["generated_tok_s"]:
            out["duo_vs_full"] = out["duo"]["generated_tok_s"] / out["full"]["generated_tok_s"]
            out["duo_itl_p99_vs_full"] = out["duo"]["itl_p99"] / out["full"]["itl_p99"]
            print(f"     ratio: duo / full generated tok/s = {out['duo_vs_full']:.2f}x; p99 inter-token latency "
                  f"duo / full = {out['duo_itl_p99_vs_full']:.2f}x")
        out["failed"] = failed
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
        print("PASS" if failed == 0 else f"FAILED requests: {failed}")
        return 0 if failed == 0 else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
