#!/usr/bin/env python3
"""Every stream of a concurrent load on `duo serve` equals `duo generate` with the same options.

Standard library only, so it runs where the openai client is not installed (the GPU machine):
starts one server with the given device options, sends every request of a mix at once
(completions, half of them streamed; full, streaming and duo attention; prompts of mixed
lengths), and compares each greedy continuation with what `duo generate` prints for it with
the same device options. Exit status 1 on any difference or failed request.

  python3 tests/serve/serve_equals_generate.py --duo build/duo -m model.gguf --pattern P.tsv \\
      -- --device cuda [--kv-type q8 ...]
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

TEXT = ("The river runs past old mills and quiet towns, under stone bridges and through green fields, "
        "carrying boats, timber and the stories of the people who live beside it. ")


def make_jobs(n, pattern):
    """n requests: prompt lengths from a few to ~1500 words; every third streaming attention,
    every third duo (when a pattern is given), the rest full."""
    words = (TEXT * 120).split()
    jobs = []
    for i in range(n):
        length = [6, 40, 300, 1500, 120, 700][i % 6]
        prompt = " ".join(words[i * 5:i * 5 + length]) + "\nContinue:"
        extra, args = {}, []
        if i % 3 == 1:
            extra = {"attention": "streaming", "sink": 16, "recent": 64}
            args = ["--attention", "streaming", "--sink", "16", "--recent", "64"]
        elif i % 3 == 2 and pattern:
            extra = {"attention": "duo", "pattern": "p", "retrieval_ratio": 0.5}
            args = ["--attention", "duo", "--pattern", pattern, "--retrieval-ratio", "0.5"]
        jobs.append({"prompt": prompt, "max_tokens": [24, 48, 64][i % 3], "extra": extra, "args": args,
                     "stream": i % 2 == 1})
    return jobs


def generate(duo, model, dev, job):
    cmd = [duo, "generate", "-q", "-m", model, "-n", str(job["max_tokens"]), "-p", job["prompt"], *dev, *job["args"]]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout.decode()
    assert out.endswith("\n") and out.startswith(job["prompt"]), out[-200:]
    return out[len(job["prompt"]):-1]


def ask(port, job):
    body = {"model": "m", "prompt": job["prompt"], "max_tokens": job["max_tokens"], "temperature": 0,
            "stream": job["stream"], **job["extra"]}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:300]!r}")
    if not job["stream"]:
        return json.loads(resp.read())["choices"][0]["text"]
    text = ""
    for line in resp.fp:
        if line.startswith(b"data: "):
            data = line[6:].strip()
            if data == b"[DONE]":
                return text
            ev = json.loads(data)
            if "error" in ev:
                raise RuntimeError(f"stream error {ev['error']}")
            text += ev["choices"][0]["text"]
    raise RuntimeError("stream ended without [DONE]")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duo", default="build/duo")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--pattern", default="")
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("dev", nargs="*", help="device options for both (after --)")
    args = ap.parse_args()
    jobs = make_jobs(args.requests, args.pattern)
    wants = [generate(args.duo, args.model, args.dev, j) for j in jobs]
    cmd = [args.duo, "serve", "--port", "0", "-m", args.model, "--model-id", "m", "--max-batch", str(args.max_batch),
           *args.dev]
    if args.pattern:
        cmd += ["--pattern-file", f"p={args.pattern}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr)
    try:
        line = proc.stdout.readline().decode()
        print(line.strip())
        port = int(re.search(r"http://[^:]+:(\d+)", line).group(1))
        got, errors = [None] * len(jobs), []

        def run(i):
            try:
                got[i] = ask(port, jobs[i])
            except Exception as e:  # reported below
                errors.append(f"request {i}: {e!r}")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = [i for i in range(len(jobs)) if got[i] != wants[i]]
        for i in bad:
            print(f"DIFF request {i} ({len(jobs[i]['prompt'])} chars, {jobs[i]['args'] or 'full'}):\n"
                  f"  serve   : {got[i]!r}\n  generate: {wants[i]!r}")
        for e in errors:
            print("ERROR", e)
        print(f"{len(jobs) - len(bad)} passed, {len(bad)} failed")
        return 1 if bad or errors else 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
