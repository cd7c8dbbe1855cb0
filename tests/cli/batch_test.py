#!/usr/bin/env python3
"""`tessera batch` in one process, on stories260K:

- greedy output from BOS equals llama2.c's published greedy-200.txt (an independent reference), and prompts
  give what `tessera generate` prints for them;
- every input line gets exactly one output line; bad lines (malformed JSON, no id, duplicate id, wrong types,
  an unknown url, a prompt longer than the context) are reported per line and do not stop the batch;
- OpenAI batch lines ({"custom_id", "url", "body"}) and chat messages work; n > 1 and logprobs give "choices";
- a job killed midway (SIGKILL), its output then cut mid-line, and re-run ends with complete, duplicate-free
  output identical to an uninterrupted run; a second re-run has nothing to do;
- --sorted writes in input order; progress lines appear when stderr is not a terminal.

    batch_test.py TESSERA_BIN MODELS_DIR
"""
import json
import os
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


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def by_id(lines):
    out = {}
    for line in lines:
        key = json.dumps(line.get("id")) if line.get("id") is not None else f"#line:{line['line']}"
        if line.get("error", {}).get("type") == "duplicate_id":
            key = f"#line:{line['line']}"
        assert key not in out, f"duplicate output for {key}"
        out[key] = line
    return out


def main():
    tessera, models = sys.argv[1], os.environ.get("TESSERA_MODELS") or sys.argv[2]
    base = os.path.join(models, "stories260K")
    model, tok = os.path.join(base, "stories260K.bin"), os.path.join(base, "tok512.model")
    golden_path = os.path.join(base, "greedy-200.txt")
    if not os.path.exists(model) or not os.path.exists(golden_path):
        print(f"SKIP: {model} or {golden_path} not found (set TESSERA_MODELS)")
        return 77
    work = tempfile.mkdtemp(prefix="tessera-batch-")
    common = [tessera, "batch", "--model", model, "--tokenizer", tok, "--threads", "1"]

    def batch(inp, out, *extra, **kw):
        return subprocess.run(common + ["--input", inp, "--output", out] + list(extra), capture_output=True,
                              text=True, timeout=kw.get("timeout", 300))

    # --- per-line results and errors ------------------------------------------------------------------------
    prompts = ["Once upon a time", "The dog", "Lily and Ben went to the park", "One day"]
    lines = [json.dumps({"id": f"p{i}", "prompt": p, "max_tokens": 40, "temperature": 0})
             for i, p in enumerate(prompts)]
    lines += [
        json.dumps({"id": "bos", "prompt": [1], "max_tokens": 200, "temperature": 0}),
        "{not json",
        json.dumps({"prompt": "no id"}),
        json.dumps({"id": "p1", "prompt": "duplicate"}),
        json.dumps({"id": "badtype", "prompt": "x", "max_tokens": "ten"}),
        json.dumps({"id": "badurl", "url": "/v1/embeddings", "body": {"input": "x"}}),
        json.dumps({"id": "toolong", "prompt": "story " * 2000, "max_tokens": 4}),
        "",
        json.dumps({"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
                             "temperature": 0}}),
        json.dumps({"id": 42, "prompt": "Tom", "max_tokens": 6, "n": 3, "temperature": 1.0, "seed": 5,
                    "logprobs": 2}),
        json.dumps({"id": "stop", "prompt": "Once upon a time", "max_tokens": 60, "temperature": 0,
                    "stop": ["Lily"]}),
    ]
    inp = os.path.join(work, "in.jsonl")
    with open(inp, "w") as f:
        f.write("\n".join(lines) + "\n")
    out = os.path.join(work, "out.jsonl")
    r = batch(inp, out, "--log-interval", "0.01")
    check(r.returncode == 0, f"batch exits 0 (exit {r.returncode}) {r.stderr[-800:] if r.returncode else ''}")
    res = by_id(read_jsonl(out))
    check(len(res) == 14, f"one output line per non-blank input line ({len(res)} of 14)")
    golden = open(golden_path).read()
    check(res.get('"bos"', {}).get("text") == golden, "greedy from BOS equals llama2.c's greedy-200.txt")
    for i, p in enumerate(prompts):
        gen = subprocess.run([tessera, "generate", "--model", model, "--tokenizer", tok, "-p", p, "-n", "40",
                              "--temperature", "0", "--threads", "1"], capture_output=True, text=True, timeout=120)
        got = res.get(f'"p{i}"', {})
        check(gen.returncode == 0 and gen.stdout.rstrip("\n") == p + got.get("text", "<none>"),
              f"p{i}: batch text equals `tessera generate` ({got.get('text', '')[:30]!r})")
        check(got.get("usage", {}).get("completion_tokens") == 40 and got.get("finish_reason") == "length",
              f"p{i}: usage and finish_reason")
    errors = {k: v["error"] for k, v in res.items() if "error" in v}
    check(errors.get("#line:6", {}).get("message") == "the line is not valid JSON", "malformed JSON on line 6")
    check("no \"id\"" in errors.get("#line:7", {}).get("message", ""), "missing id on line 7")
    check("duplicate id \"p1\" (first on line 2)" in errors.get("#line:8", {}).get("message", ""),
          "duplicate id on line 8")
    check("max_tokens" in errors.get('"badtype"', {}).get("message", ""), "wrong type names the field")
    check("/v1/embeddings" in errors.get('"badurl"', {}).get("message", ""), "unknown url refused")
    check("context" in errors.get('"toolong"', {}).get("message", ""), "prompt longer than the context refused")
    check(set(errors) == {"#line:6", "#line:7", "#line:8", '"badtype"', '"badurl"', '"toolong"'},
          f"exactly the bad lines are errors ({sorted(errors)})")
    chat = res.get('"chat"', {})
    check(isinstance(chat.get("text"), str) and chat.get("usage", {}).get("completion_tokens") == 8,
          "OpenAI batch chat line answered")
    multi = res.get("42", {})
    choices = multi.get("choices", [])
    check(len(choices) == 3 and all(len(c["logprobs"]["tokens"]) == 6 for c in choices)
          and multi.get("text") == choices[0]["text"] and multi["usage"]["completion_tokens"] == 18,
          "n=3 with logprobs gives three choices")
    stop = res.get('"stop"', {})
    check(stop.get("finish_reason") == "stop" and "Lily" not in stop.get("text", "Lily"), "stop string cuts the text")
    check("[batch] 14/14 done" in r.stderr, "a progress line when stderr is not a terminal")

    # --- killed midway, cut mid-line, resumed -----------------------------------------------------------------
    big = os.path.join(work, "big.jsonl")
    n_big = 300
    with open(big, "w") as f:
        for i in range(n_big):
            f.write(json.dumps({"id": f"b{i}", "prompt": f"Once upon a time {i} ", "max_tokens": 96,
                                "temperature": 0}) + "\n")
    full = os.path.join(work, "full.jsonl")
    r = batch(big, full, "--max-num-seqs", "4")
    check(r.returncode == 0 and len(read_jsonl(full)) == n_big, "uninterrupted run completes")
    resumed = os.path.join(work, "resumed.jsonl")
    # One sequence at a time, so the job is still running when it is killed; the restart batches (decodes are
    # batch-invariant, so the results must not change).
    proc = subprocess.Popen(common + ["--input", big, "--output", resumed, "--max-num-seqs", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    written = 0
    while time.time() < deadline and proc.poll() is None:
        written = open(resumed).read().count("\n") if os.path.exists(resumed) else 0
        if written >= 20:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = open(resumed).read().count("\n")
    check(20 <= written < n_big, f"killed midway ({written} of {n_big} lines written)")
    with open(resumed, "a") as f:
        f.write('{"id": "b9999", "text": "cut sho')  # a write cut short by the kill
    r = batch(big, resumed, "--max-num-seqs", "4")
    check(r.returncode == 0 and "dropping a cut-short last line" in r.stderr, "re-run repairs the cut line")
    check(f"{written} already in" in r.stderr and f"{n_big - written} to run" in r.stderr,
          "re-run skips what is written")
    got = read_jsonl(resumed)
    ids = [x["id"] for x in got]
    check(len(ids) == n_big and len(set(ids)) == n_big, f"complete and duplicate-free ({len(ids)} lines)")
    check(by_id(got) == by_id(read_jsonl(full)), "resumed output equals the uninterrupted run")
    r = batch(big, resumed, "--max-num-seqs", "4", "--sorted")
    check(r.returncode == 0 and "0 to run" in r.stderr, "a finished output has nothing left to run")
    check([x["id"] for x in read_jsonl(resumed)] == [f"b{i}" for i in range(n_big)], "--sorted: input order")

    # --- files the user got wrong -----------------------------------------------------------------------------
    r = batch(os.path.join(work, "missing.jsonl"), os.path.join(work, "o.jsonl"))
    check(r.returncode != 0 and "cannot read the batch input" in r.stderr, "missing input: clear error")
    notjson = os.path.join(work, "notjson.txt")
    with open(notjson, "w") as f:
        f.write("hello\n")
    r = batch(inp, notjson)
    check(r.returncode != 0 and "not a JSON object" in r.stderr and open(notjson).read() == "hello\n",
          "an output that is not ours is refused and left untouched")
    print(f"{len(FAILURES)} failures")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
