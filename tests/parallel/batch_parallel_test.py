#!/usr/bin/env python3
"""`mpirun tessera batch` as data-parallel replicas (stories260K, greedy and seeded sampling):

- 2 replicas (dp derived from the job size) write exactly what one process writes, and both take work;
- 2 replicas x tp 2 give the same texts, token counts and finish reasons;
- a job stopped midway (SIGTERM to mpirun and its ranks) and started again ends with complete,
  duplicate-free output equal to one process's;
- layouts that do not fit the job are refused with a clear error.

    batch_parallel_test.py TESSERA_BIN MODELS_DIR MPIEXEC
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def descendants(pid):
    """Every process below pid (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def read_by_id(path):
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    out = {}
    for line in lines:
        assert line["id"] not in out, f"duplicate id {line['id']}"
        out[line["id"]] = line
    return out


def essentials(results):
    return {k: (v.get("text"), v.get("usage"), v.get("finish_reason"), v.get("error")) for k, v in results.items()}


def main():
    tessera, models, mpiexec = sys.argv[1], os.environ.get("TESSERA_MODELS") or sys.argv[2], sys.argv[3]
    model = os.path.join(models, "stories260K", "stories260K.bin")
    if not os.path.exists(model):
        print(f"SKIP: {model} not found (set TESSERA_MODELS)")
        return 77
    tok = os.path.join(models, "stories260K", "tok512.model")
    mpi = [mpiexec, "--oversubscribe", "--allow-run-as-root"]
    work = tempfile.mkdtemp(prefix="tessera-batch-mpi-")
    inp = os.path.join(work, "in.jsonl")
    n = 200
    with open(inp, "w") as f:
        for i in range(n):
            req = {"id": f"r{i}", "prompt": f"Once upon a time {i}", "max_tokens": 48, "temperature": 0}
            if i % 10 == 3:  # seeded sampling must not depend on which replica runs the request
                req.update({"temperature": 0.9, "top_p": 0.9, "seed": i})
            f.write(json.dumps(req) + "\n")
        f.write("{broken\n")
    batch = [tessera, "batch", "--model", model, "--tokenizer", tok, "--threads", "1", "--input", inp,
             "--max-num-seqs", "4"]

    one = os.path.join(work, "one.jsonl")
    r = subprocess.run(batch + ["--output", one], capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, "one process completes")
    want = read_by_id(one)

    two = os.path.join(work, "dp2.jsonl")
    r = subprocess.run(mpi + ["-np", "2"] + batch + ["--output", two], capture_output=True, text=True, timeout=300)
    check(r.returncode == 0, f"dp 2 completes (exit {r.returncode}) {r.stderr[-1500:] if r.returncode else ''}")
    check(read_by_id(two) == want, "dp 2 output identical to one process")
    shares = re.search(r"results per replica: (\d+), (\d+)", r.stderr)
    check(shares is not None and int(shares.group(1)) > 0 and int(shares.group(2)) > 0
          and int(shares.group(1)) + int(shares.group(2)) == n,
          f"both replicas took work ({shares.group(0) if shares else r.stderr[-300:]})")

    four = os.path.join(work, "dp2tp2.jsonl")
    r = subprocess.run(mpi + ["-np", "4"] + batch + ["--output", four, "--tp", "2"], capture_output=True, text=True,
                       timeout=300)
    check(r.returncode == 0, f"dp 2 x tp 2 completes (exit {r.returncode}) {r.stderr[-1500:] if r.returncode else ''}")
    got = read_by_id(four) if r.returncode == 0 else {}
    check(essentials(got) == essentials(want), "dp 2 x tp 2: same texts, token counts and finish reasons")

    # A longer job to stop midway.
    long_inp = os.path.join(work, "long.jsonl")
    n_long = 600
    with open(long_inp, "w") as f:
        for i in range(n_long):
            f.write(json.dumps({"id": f"l{i}", "prompt": f"One day {i}", "max_tokens": 160, "temperature": 0}) + "\n")
    long_batch = [x if x != inp else long_inp for x in batch]
    long_one = os.path.join(work, "long_one.jsonl")
    r = subprocess.run(long_batch + ["--output", long_one], capture_output=True, text=True, timeout=300)
    long_want = read_by_id(long_one)
    stopped = os.path.join(work, "stopped.jsonl")
    # One sequence at a time, so the job is still running when it is stopped; results do not depend on the batch
    # (decodes are batch-invariant), so the restart may batch as it likes.
    one_at_a_time = long_batch[:long_batch.index("--max-num-seqs")] + ["--max-num-seqs", "1"]
    # On a loaded machine this process may not run again before the short job is done or nearly done (seen in CI:
    # all 600 lines written, signalled or not); that says nothing about stopping, so such a start is retried.
    signalled = False
    for attempt in range(3):
        if os.path.exists(stopped):
            os.remove(stopped)
        proc = subprocess.Popen(mpi + ["-np", "2"] + one_at_a_time + ["--output", stopped],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(stopped) and open(stopped).read().count("\n") >= 10:
                break
            time.sleep(0.005)
        at_signal = None
        if proc.poll() is None:
            # SIGTERM to mpirun and to its ranks at once: mpirun alone forwards it only after a delay in which the
            # ranks may finish the whole job (seen: a third of it), and then nothing was stopped midway.
            at_signal = open(stopped).read().count("\n") if os.path.exists(stopped) else 0
            for pid in [proc.pid] + descendants(proc.pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=60)
        # A signal sent when most of the job is already written (this process not scheduled for a while: seen in
        # CI, 600 of 600 lines) says nothing about stopping either.
        signalled = at_signal is not None and at_signal <= n_long // 2
        if signalled:
            break
        print(f"attempt {attempt + 1}: the job ended (exit {proc.returncode}) or had written {at_signal} of {n_long} "
              "lines before it could be signalled; again")
    written = open(stopped).read().count("\n")
    check(signalled and 10 <= written < n_long, f"stopped midway ({written} of {n_long} lines, signalled: {signalled})")
    r = subprocess.run(mpi + ["-np", "2"] + long_batch + ["--output", stopped, "--sorted"], capture_output=True,
                       text=True, timeout=300)
    check(r.returncode == 0 and f"{n_long - written} to run" in r.stderr,
          "restarted job runs only what is left: " + "".join(l for l in r.stderr.splitlines(True) if "batch:" in l))
    check(read_by_id(stopped) == long_want, "restarted output: complete, duplicate-free, identical to one process")

    r = subprocess.run(mpi + ["-np", "3"] + batch + ["--output", os.path.join(work, "x.jsonl"), "--dp", "2"],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode != 0 and "--dp 2 x --tp 1 x --pp 1 = 2 ranks, but the job has 3" in r.stderr,
          "--dp 2 on 3 ranks refused")
    r = subprocess.run(mpi + ["-np", "3"] + batch + ["--output", os.path.join(work, "y.jsonl"), "--tp", "2"],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode != 0 and "the job size must be a multiple of tp x pp" in r.stderr,
          "3 ranks with --tp 2 refused")
    print(f"{len(FAILURES)} failures")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
