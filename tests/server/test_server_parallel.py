#!/usr/bin/env python3
"""`tessera serve` as rank 0 of a tensor / pipeline parallel job (mpiexec): concurrent greedy requests get exactly
the completions a single-process server gives (and a prompt list with echo + logprobs the same prompt and token
logprobs, within 1e-4), and SIGTERM to mpiexec drains rank 0, which then stops the other
ranks; the whole job ends. (Open MPI's mpiexec itself exits 1 after forwarding a SIGTERM, whatever the ranks do.)

    test_server_parallel.py TESSERA_BIN MODELS_DIR MPIEXEC
"""
import concurrent.futures
import os
import sys

import requests

from serve_fixture import Server, models_dir, skip

PROMPTS = ["Once upon a time", "The little dog", "Lily and Ben went to the park", "One day, a bird",
           "Tom had a red ball", "The sun was hot", "Mom said", "A big fish"]


def completions(srv):
    def one(prompt):
        r = requests.post(srv.url + "/v1/completions", timeout=300,
                          json={"prompt": prompt, "max_tokens": 40, "temperature": 0})
        r.raise_for_status()
        return r.json()["choices"][0]["text"]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(one, PROMPTS))


def echo_logprobs(srv):
    """A prompt list with echo + logprobs: the prompt rows' logits come from every rank's part of the model."""
    r = requests.post(srv.url + "/v1/completions", timeout=300,
                      json={"prompt": PROMPTS[:3], "max_tokens": 8, "temperature": 0, "echo": True, "logprobs": 3})
    r.raise_for_status()
    return [c["logprobs"] for c in r.json()["choices"]]


def same_logprobs(want, got):
    def close(a, b):
        return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-4)
    return all(w["tokens"] == g["tokens"] and all(close(a, b) for a, b in zip(w["token_logprobs"], g["token_logprobs"]))
               for w, g in zip(want, got)) and len(want) == len(got)


def main():
    tessera, mpiexec = sys.argv[1], sys.argv[3]
    root = models_dir(sys.argv[2])
    model = os.path.join(root, "stories260K", "stories260K.bin")
    if not os.path.exists(model):
        skip(model + " not found (set TESSERA_MODELS)")
    args = ["--model", model, "--tokenizer", os.path.join(root, "stories260K", "tok512.model")]
    single = Server(tessera, args, threads=1)
    try:
        single.wait_ready()
        want = completions(single)
        want_lp = echo_logprobs(single)
    finally:
        single.stop()
    failures = 0
    mpi = [mpiexec, "--oversubscribe", "--allow-run-as-root"]
    for tp, pp in [(2, 1), (1, 2), (2, 2)]:
        srv = Server(tessera, args + ["--tp", str(tp), "--pp", str(pp)], launcher=mpi + ["-np", str(tp * pp)],
                     threads=1)
        try:
            srv.wait_ready()
            got = completions(srv)
            got_lp = echo_logprobs(srv)
        finally:
            status = srv.stop()
        same_lp = same_logprobs(want_lp, got_lp)
        same = got == want and same_lp
        print(f"tp {tp} x pp {pp}: completions {'equal' if got == want else 'DIFFER'}, echo logprobs "
              f"{'equal' if same_lp else 'DIFFER'}; mpiexec exit {status} after SIGTERM")
        if not same:
            for w, g in zip(want, got):
                if w != g:
                    print(f"  want {w!r}\n  got  {g!r}")
        stopped = "[tessera] stopped" in srv.log_text()
        if not stopped:
            print("rank 0 did not drain and stop cleanly")
        if not same or not stopped:
            failures += 1
            print(srv.log_text()[-2000:])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
