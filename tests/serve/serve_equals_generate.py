#!/usr/bin/env python3
"""Every stream of a concurrent load on `duo serve` equals `duo generate` with the same options.

Standard library only, so it runs where the openai client is not installed (the GPU machine):
starts one server with the given device options, sends every request of a mix at once
(completions, half of them streamed; full, streaming and duo attention; prompts of mixed
lengths), and compares each greedy continuation with what `duo generate` prints for it with
the same device options. Exit status 1 on any difference or failed request.

On the GPU a batched step rounds differently from a lone sequence's (GEMM against GEMV, other
split counts in attention), so where the model's top two next tokens are nearly tied the two may
part. A difference is therefore examined: `duo generate`'s own log-probabilities (`duo logits`,
same device options) at the point where the texts part must show both continuations' next tokens
among the top few, within --tie of each other. Only then is it a near tie (reported, not failed),
and no more than a quarter of the requests may part that way; any other difference fails.

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


def near_tie(duo, model, dev, job, served, generated, tie):
    """The log-probability gap between the two texts' next tokens where they part, from `duo
    logits` with the job's options; None when that point does not show both among the top 8."""
    common = os.path.commonprefix([served, generated])
    # Back to a word start: both BPE vocabularies here attach a leading space to the word.
    cut = max(common.rfind(" "), common.rfind("\n"))
    cut = cut if cut >= 0 else 0
    prefix = job["prompt"] + common[:cut]
    rest_a, rest_b = served[cut:], generated[cut:]
    cmd = [duo, "logits", "--json", "-k", "8", "-m", model, "-p", prefix, *dev, *job["args"]]
    top = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)["top"]

    def first(rest):  # the longest listed piece the text goes on with
        hits = [t for t in top if t["piece"] and rest.startswith(t["piece"])]
        return max(hits, key=lambda t: len(t["piece"])) if hits else None

    a, b = first(rest_a), first(rest_b)
    if not a or not b or a["id"] == b["id"]:
        return None
    gap = abs(a["logprob"] - b["logprob"])
    return gap if gap <= tie else None


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
    ap.add_argument("--tie", type=float, default=0.0,
                    help="log-probability gap under which a difference is a near tie (0: every difference fails)")
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
        differ = [i for i in range(len(jobs)) if got[i] is not None and got[i] != wants[i]]
        bad, ties = [], []
        for i in differ:
            gap = near_tie(args.duo, args.model, args.dev, jobs[i], got[i], wants[i], args.tie) if args.tie > 0 else None
            (bad if gap is None else ties).append(i)
            kind = "DIFF" if gap is None else f"NEAR TIE (top-two gap {gap:.4f})"
            print(f"{kind} request {i} ({len(jobs[i]['prompt'])} chars, {jobs[i]['args'] or 'full'}):\n"
                  f"  serve   : {got[i]!r}\n  generate: {wants[i]!r}")
        for e in errors:
            print("ERROR", e)
        too_many = len(ties) * 4 > len(jobs)
        print(f"{len(jobs) - len(differ)} equal, {len(ties)} parted at a near tie, {len(bad)} failed"
              + (" (too many near ties)" if too_many else ""))
        return 1 if bad or errors or too_many else 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
