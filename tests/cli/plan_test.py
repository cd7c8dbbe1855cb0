#!/usr/bin/env python3
"""End-to-end checks of `tessera plan`: per-rank numbers against sizes computed here from the model's shapes,
against the bytes `tessera quantize` really wrote, the refusal (exit code and numbers) and input errors."""
import json
import os
import subprocess
import sys
import tempfile

TESSERA = sys.argv[1]
MODELS = os.environ.get("TESSERA_MODELS", sys.argv[2])
GIB = 1 << 30
failures = []


def run(*args, timeout=120):
    return subprocess.run([TESSERA, *args], capture_output=True, text=True, timeout=timeout)


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"\n     {detail}"))
    if not cond:
        failures.append(name)


def plan_json(*args):
    r = run("plan", "--json", *args)
    try:
        return r, json.loads(r.stdout)
    except json.JSONDecodeError:
        return r, None


def row_bytes(scheme, cols):
    """Bytes of one stored row, from the block layouts in quant/blocks.h (written out independently here)."""
    if scheme == "bf16":
        return 2 * cols
    if scheme == "int8":
        return 4 + (cols + 3) // 4 * 4
    kind, group = scheme.split(":g")
    blocks = -(-cols // int(group))
    return blocks * (2 + int(group) // 2) if kind in ("int4", "nf4") else None


# llama2-7b: dim 4096, FFN 11008, 32 layers, 32 heads (= kv heads) of 128, vocab 32000, context 4096, untied.
def llama2_7b_rank_bytes(scheme, tp):
    dim, ffn, layers, vocab = 4096, 11008, 32, 32000
    q = dim // tp
    hidden = ffn // tp  # 5504 for tp 2: a multiple of 128, so every group size splits there
    vocab_rows = -(-vocab // tp)
    rb = lambda cols: row_bytes(scheme, cols)
    per_layer = 3 * q * rb(dim) + dim * rb(q) + 2 * hidden * rb(dim) + dim * rb(hidden)
    matrices = layers * per_layer + 2 * vocab_rows * rb(dim)
    norms = (layers * 2 * dim + dim) * 4
    return matrices, norms


for scheme in ("bf16", "int8", "int4:g128", "int4:g32", "nf4:g128"):
    r, j = plan_json("--preset", "llama2-7b", "--quant", scheme, "--tp", "2", "--memory", "64GiB")
    ok = r.returncode == 0 and j is not None and len(j["ranks"]) == 2
    matrices, norms = llama2_7b_rank_bytes(scheme, 2)
    for rank in j["ranks"] if ok else []:
        by = rank["weights_by_scheme"]
        ok = ok and len(by) == 1 and by[0]["bytes"] == matrices and rank["norm_bias_bytes"] == norms
        ok = ok and rank["weight_bytes"] == matrices + norms
    check(f"llama2-7b {scheme} tp 2: weight bytes per rank from the shapes", ok,
          f"want {matrices} + {norms}, got {r.stdout[:2000]} {r.stderr}")
    if ok:
        alt = {a["scheme"]: a.get("rank_weight_bytes") for a in j["weight_bytes_by_scheme"]}
        check(f"comparison table row {scheme} equals the plan with --quant {scheme}",
              alt.get(scheme) == [matrices + norms] * 2, str(alt))

# KV per token and capacity: fp32 K and V of this rank's 16 kv heads in all 32 layers.
r, j = plan_json("--preset", "llama2-7b", "--quant", "int4:g128", "--tp", "2", "--memory", "8GiB")
ok = r.returncode == 0 and j is not None
for rank in j["ranks"] if ok else []:
    fixed = rank["weight_bytes"] + rank["workspace_bytes"]["total"]
    ok = ok and rank["kv_bytes_per_token"] == 2 * 32 * 16 * 128 * 4
    ok = ok and rank["kv_tokens"] == (8 * GIB - fixed) // rank["kv_bytes_per_token"]
    ok = ok and rank["max_sequences"] == rank["kv_tokens"] // 4096 and rank["max_sequences"] >= 1
check("KV bytes per token, tokens and sequences follow from the memory left", ok, r.stdout[:3000] + r.stderr)

# The text output names every part and the schemes used.
r = run("plan", "--preset", "llama2-7b", "--quant", "int4:g128", "--quant-rule", "lm_head=int8", "--tp", "2",
        "--memory", "8GiB")
out = r.stdout
check("text plan: per-rank weights by scheme, workspace estimate, KV, capacity, comparison",
      r.returncode == 0 and all(s in out for s in ("rank 0", "rank 1", "int4:g128", "int8", "workspace", "estimate",
                                                  "per token", "sequences of 4096 tokens", "bf16/f16", "nf4:g128",
                                                  "fits")), out + r.stderr)

# Refusal: bf16 llama2-7b (12.6 GiB) in 8 GiB, with the numbers and a hint; the table still goes to stdout.
r = run("plan", "--preset", "llama2-7b", "--memory", "8GiB")
check("weights larger than --memory: refused with rank, need, have and a hint",
      r.returncode == 1 and all(s in r.stderr for s in ("rank 0", "needs", "has 8.00 GiB", "--tp", "int4:g128"))
      and "rank 0" in r.stdout, r.stdout[-500:] + r.stderr)
r, j = plan_json("--preset", "llama2-70b", "--tp", "2", "--memory", "24GiB")
check("--json refusal: exit 1, JSON says fits false and why",
      r.returncode == 1 and j is not None and j["fits"] is False and "does not fit" in j["refusal"]
      and "does not fit" in r.stderr, r.stdout[-500:] + r.stderr)

# The boundary: KV for exactly one sequence of --max-seq-len fits; one byte less is refused (tp 2 x pp 2).
args = ["--preset", "tinyllama-1.1b", "--quant", "int8", "--tp", "2", "--pp", "2", "--max-seq-len", "1000"]
r, j = plan_json(*args, "--memory", "64GiB")
if r.returncode == 0 and j is not None:
    need = max(x["weight_bytes"] + x["workspace_bytes"]["total"] + 1000 * x["kv_bytes_per_token"] for x in j["ranks"])
    worst = max(j["ranks"], key=lambda x: x["weight_bytes"] + x["workspace_bytes"]["total"] +
                1000 * x["kv_bytes_per_token"])["rank"]
    fits = run("plan", *args, "--memory", str(need))
    short = run("plan", *args, "--memory", str(need - 1))
    check("exactly one sequence of KV fits", fits.returncode == 0, fits.stdout[-800:] + fits.stderr)
    check("one byte less is refused, naming the rank",
          short.returncode == 1 and f"rank {worst} " in short.stderr and "one sequence of 1000 tokens" in short.stderr,
          short.stderr)
    check("4 ranks planned, stages split the layers",
          [x["layers"] for x in j["ranks"]] == [[0, 11], [0, 11], [11, 22], [11, 22]], str([x["layers"] for x in j["ranks"]]))
else:
    check("tinyllama tp 2 x pp 2 plans", False, r.stderr)

# A real checkpoint: the plan equals the bytes `tessera quantize` reports, also when read back from its output.
stories = os.path.join(MODELS, "stories260K", "stories260K.bin")
if os.path.exists(stories):
    quant = ["--quant", "int4:g32", "--quant-rule", "lm_head=int8", "--quant-rule", "layers.0.*=bf16"]
    with tempfile.TemporaryDirectory() as d:
        out_dir, report = os.path.join(d, "q"), os.path.join(d, "report.json")
        q = run("quantize", "--model", stories, *quant, "--out", out_dir, "--quant-report", report, "--threads", "1")
        check("tessera quantize stories260K", q.returncode == 0, q.stderr)
        if q.returncode == 0:
            with open(report) as f:
                rep = json.load(f)
            tensors = rep["tensors"] if isinstance(rep, dict) else rep
            actual = {}
            for t in tensors:
                actual[t["scheme"]] = actual.get(t["scheme"], 0) + t["bytes_after"]
            actual = {k: v for k, v in actual.items() if v}
            r, j = plan_json("--model", stories, *quant, "--memory", "1GiB")
            planned = {s["scheme"]: s["bytes"] for s in j["ranks"][0]["weights_by_scheme"]} if j else None
            check("stories260K: planned bytes per scheme equal the quantize report", planned == actual,
                  f"plan {planned} report {actual} {r.stderr}")
            r2, j2 = plan_json("--model", out_dir, "--memory", "1GiB")
            planned2 = {s["scheme"]: s["bytes"] for s in j2["ranks"][0]["weights_by_scheme"]} if j2 else None
            check("the quantized output directory plans to the same bytes", planned2 == actual
                  and j2["model"]["format"] == "tessera quantize output", f"{planned2} {r2.stderr}")
else:
    print(f"skip stories260K checks: {stories} not found (set TESSERA_MODELS to the shared models folder)")

# Input errors are messages, not crashes.
for name, args, needle in (
        ("missing model path", ["--model", "/nonexistent/model.bin"], "/nonexistent/model.bin"),
        ("unknown preset", ["--preset", "no-such-preset"], "no-such-preset"),
        ("no model", [], "--model"),
        ("bad size", ["--preset", "llama2-7b", "--memory", "12XB"], "--memory"),
        ("zero size", ["--preset", "llama2-7b", "--memory", "0GiB"], "--memory"),
        ("bad scheme", ["--preset", "llama2-7b", "--quant", "int3"], "int3"),
        ("rule matching nothing", ["--preset", "llama2-7b", "--quant-rule", "layer.*=int8"], "matches no weight"),
        ("--max-seq-len beyond the context", ["--preset", "llama2-7b", "--max-seq-len", "5000"], "4096"),
        ("tp not dividing heads", ["--preset", "llama2-7b", "--tp", "3"], "--tp 3"),
        ("bad --pp-layers", ["--preset", "llama2-7b", "--pp", "2", "--pp-layers", "10,10"], "32 layers")):
    r = run("plan", *args)
    check(f"error: {name}", r.returncode == 1 and needle in r.stderr and "internal error" not in r.stderr,
          f"rc {r.returncode}: {r.stderr}")

# Without --memory the plan uses this machine's MemAvailable and says so.
r = run("plan", "--preset", "llama-110m")
check("default memory is MemAvailable", "MemAvailable" in r.stdout and r.returncode in (0, 1), r.stdout + r.stderr)
r = run("plan", "--help")
check("plan --help lists its options", r.returncode == 0 and all(
    o in r.stdout for o in ("--model", "--preset", "--quant", "--quant-rule", "--tp", "--pp", "--pp-layers", "--memory",
                            "--max-seq-len", "--max-num-seqs", "--json")), r.stdout)

# Loading a random preset that cannot fit this machine is refused before anything is generated, with the plan's
# numbers (llama2-70b bf16: 68,975,329,280 weights x 2 bytes = 128.48 GiB, computed from the shapes).
def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


avail = mem_available()
per_layer = 8192 * 8192 * 2 + 1024 * 8192 * 2 + 3 * 28672 * 8192
bf16_70b = 2 * (80 * per_layer + 2 * 32000 * 8192)
if avail is not None and avail < bf16_70b:
    r = run("generate", "--dummy-weights", "--preset", "llama2-70b", "--prompt-ids", "1", "-n", "1", timeout=60)
    check("a preset that cannot fit is refused", r.returncode == 1 and "llama2-70b" in r.stderr and
          f"{bf16_70b / GIB:.2f} GiB" in r.stderr and "available" in r.stderr and "--quant" in r.stderr and
          "internal error" not in r.stderr, f"rc {r.returncode}: {r.stderr}")
    if avail < 33 * GIB:
        r = run("generate", "--dummy-weights", "--preset", "llama2-70b", "--quant", "int4:g128", "--prompt-ids", "1",
                "-n", "1", timeout=60)
        check("a quantized preset that cannot fit is refused", r.returncode == 1 and "one matrix of 500.00 MiB" in
              r.stderr and "smaller scheme" in r.stderr, f"rc {r.returncode}: {r.stderr}")
else:
    print("skip the refusal of a preset that cannot fit: this machine has room for llama2-70b in bf16")

if failures:
    print(f"{len(failures)} failed: {failures}")
    sys.exit(1)
print("all passed")
