#!/usr/bin/env python3
"""Serving benchmark: throughput and latency of `tessera serve` at several client concurrencies.

Starts `tessera serve` on the random-weight preset (default llama-110m) on a free port, or measures a running
server given with --url. Each concurrency level runs closed-loop clients: every client sends streamed
/v1/completions requests (token-id prompts, ignore_eos so every request generates exactly --max-tokens) back to
back until the level has sent its requests. Reported per level:
  - output tok/s: generated tokens / wall time of the level (aggregate decode throughput)
  - TTFT p50/p99: request sent -> first token received
  - TPOT p50/p99: (last token - first token) / (tokens - 1), per request

  scripts/bench_serving.py --tessera build/bin/tessera [--preset llama-110m] [--concurrency 1,4,16,64] [--json]
"""
import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def one_request(url, prompt, max_tokens, headers):
    t0 = time.perf_counter()
    first, last, n = None, None, 0
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    with requests.post(url + "/v1/completions", json=body, stream=True, headers=headers, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                continue
            chunk = json.loads(line[5:])
            if not chunk["choices"]:
                continue
            got = len(chunk["choices"][0]["text"].split())  # the id tokenizer writes one id per token
            if got == 0:
                continue
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            n += got
    return {"ttft": first - t0, "tpot": (last - first) / (n - 1) if n > 1 else None, "tokens": n}


def run_level(url, concurrency, n_requests, prompt_len, max_tokens, vocab, headers, seed):
    rng = random.Random(seed)
    prompts = [[1] + [rng.randrange(3, vocab) for _ in range(prompt_len - 1)] for _ in range(n_requests)]
    results, lock, next_i = [], threading.Lock(), [0]

    def client():
        while True:
            with lock:
                i = next_i[0]
                if i >= n_requests:
                    return
                next_i[0] += 1
            r = one_request(url, prompts[i], max_tokens, headers)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["ttft"] for r in results]
    tpot = [r["tpot"] for r in results if r["tpot"] is not None]
    return {"concurrency": concurrency, "requests": len(results), "tokens": tokens, "seconds": wall,
            "output_tok_s": tokens / wall, "ttft_p50_ms": 1e3 * percentile(ttft, 0.5),
            "ttft_p99_ms": 1e3 * percentile(ttft, 0.99), "tpot_p50_ms": 1e3 * percentile(tpot, 0.5),
            "tpot_p99_ms": 1e3 * percentile(tpot, 0.99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tessera", default="build/bin/tessera", help="tessera executable (when --url is not given)")
    ap.add_argument("--url", help="measure a running server instead of starting one")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--preset", default="llama-110m")
    ap.add_argument("--threads", type=int, default=0, help="server threads (0: all cores)")
    ap.add_argument("--server-args", default="", help="more arguments for tessera serve, e.g. '--act-dtype fp32'")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    proc, tmp = None, None
    url = args.url
    if url is None:
        tmp = tempfile.TemporaryDirectory()
        port_file = os.path.join(tmp.name, "port")
        cmd = [args.tessera, "serve", "--dummy-weights", "--preset", args.preset, "--port", "0", "--port-file",
               port_file, "--max-num-seqs", "64", "--kv-memory", "2GiB"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        cmd += shlex.split(args.server_args)
        proc = subprocess.Popen(cmd, stderr=open(os.path.join(tmp.name, "log"), "w"))
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if proc.poll() is not None:
                sys.exit("server failed:\n" + open(os.path.join(tmp.name, "log")).read())
            time.sleep(0.05)
        url = "http://127.0.0.1:" + open(port_file).read().strip()
    headers = {"Authorization": "Bearer " + args.api_key} if args.api_key else {}
    try:
        while requests.get(url + "/health", timeout=10).status_code != 200:
            time.sleep(0.1)
        one_request(url, [1, 2, 3], 4, headers)  # warm-up
        rows = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            n = max(args.min_requests, c * args.requests_per_client)
            row = run_level(url, c, n, args.prompt_len, args.max_tokens, args.vocab, headers, seed=c)
            rows.append(row)
            if not args.json:
                print("concurrency %3d: %4d requests, %7.1f output tok/s | TTFT p50 %8.1f ms p99 %8.1f ms | "
                      "TPOT p50 %7.1f ms p99 %7.1f ms" % (c, row["requests"], row["output_tok_s"], row["ttft_p50_ms"],
                                                        row["ttft_p99_ms"], row["tpot_p50_ms"], row["tpot_p99_ms"]),
                      flush=True)
        base = rows[0]["output_tok_s"]
        if not args.json:
            for row in rows[1:]:
                print("throughput at concurrency %d = %.2fx concurrency %d" % (row["concurrency"],
                                                                            row["output_tok_s"] / base,
                                                                            rows[0]["concurrency"]))
        else:
            print(json.dumps(rows, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
