#!/usr/bin/env python3
"""End-to-end checks of load-time quantization on the command line (stories260K):
--quant/--quant-rule/--quant-rules/--calib/--quant-report/--act-quant/--act-dtype on generate and eval, and
tessera quantize --out."""
import json
import os
import subprocess
import sys
import tempfile

TESSERA = sys.argv[1]
MODELS = os.environ.get("TESSERA_MODELS", sys.argv[2])
ROOT = sys.argv[3] if len(sys.argv) > 3 else os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
failures = []

STORY = os.path.join(MODELS, "stories260K", "stories260K.bin")
TOK = os.path.join(MODELS, "stories260K", "tok512.model")
if not (os.path.exists(STORY) and os.path.exists(TOK)):
    print(f"skip: {STORY} or {TOK} not found (set TESSERA_MODELS to the shared models folder)")
    sys.exit(77)

CALIB_TEXT = os.path.join(ROOT, "docs", "data", "stories260K-t1-calib.txt")
FALLBACK_CALIB = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. "
    "One day, she saw a big red ball under a tree. She ran to it and kicked it very hard. The ball flew up high and "
    "landed in the pond. Lily was sad, but her mom helped her get it back. They laughed and went home together.\n"
) * 8


def run(*args, timeout=300):
    return subprocess.run([TESSERA, *args], capture_output=True, text=True, timeout=timeout)


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"\n     {detail}"))
    if not cond:
        failures.append(name)


GEN = ["generate", "--prompt", "Once upon a time", "-n", "60", "--temperature", "0", "--threads", "2"]
BASE = [*GEN, "--model", STORY, "--tokenizer", TOK]

# Help documents every flag on every subcommand that loads a model.
flags = ["--quant", "--quant-rule", "--quant-rules", "--calib", "--calib-tokens", "--quant-report", "--act-quant",
         "--act-dtype"]
for sub, extra in (("generate", []), ("bench", []), ("quantize", ["--out", "--force"])):
    r = run(sub, "--help")
    missing = [f for f in flags + extra if f not in r.stdout]
    check(f"{sub} --help lists the quantization flags", r.returncode == 0 and not missing, f"missing {missing}")

fp = run(*BASE)
check("fp generate works", fp.returncode == 0 and fp.stdout.startswith("Once upon a time"), fp.stderr)

with tempfile.TemporaryDirectory() as d:
    report = os.path.join(d, "report.json")
    q = run(*BASE, "--quant", "int4:g32", "--quant-report", report)
    check("generate --quant int4:g32 works", q.returncode == 0 and q.stdout.startswith("Once upon a time")
          and len(q.stdout) > len("Once upon a time") + 20, q.stdout + q.stderr)
    check("summary line on stderr", "int4:g32 x37" in q.stderr and "->" in q.stderr and " s\n" in q.stderr, q.stderr)
    try:
        rep = json.load(open(report))
        names = [t["name"] for t in rep["tensors"]]
        ok = (len(rep["tensors"]) == 37 and names[0] == "tok_embeddings" and names[-1] == "lm_head"
              and all(t["scheme"] == "int4:g32" for t in rep["tensors"])
              and all(0.01 < t["relative_error"] < 0.2 for t in rep["tensors"] if t["bytes_after"] > 0)
              and rep["bytes_after"] < rep["bytes_before"] / 4 and rep["seconds"] >= 0)
        check("--quant-report writes valid JSON", ok, json.dumps(rep)[:500])
    except (OSError, ValueError, KeyError) as e:
        check("--quant-report writes valid JSON", False, repr(e))

    # Errors users can act on.
    r = run(*BASE, "--quant", "bogus")
    check("--quant bogus fails clearly", r.returncode == 1 and "bogus" in r.stderr and "int4" in r.stderr
          and "Traceback" not in r.stderr, r.stderr)
    r = run(*BASE, "--quant-rule", "lm_head")
    check("--quant-rule without = fails clearly", r.returncode == 1 and "PATTERN=SCHEME" in r.stderr, r.stderr)
    r = run(*BASE, "--quant", "int8", "--quant-rule", "layer.0.*=bf16")
    check("a rule matching nothing fails clearly", r.returncode == 1 and "matches no weight" in r.stderr, r.stderr)
    r = run(*BASE, "--quant-rules", os.path.join(d, "missing.json"))
    check("missing rules file fails clearly", r.returncode == 1 and "missing.json" in r.stderr, r.stderr)
    r = run(*BASE, "--act-quant", "int8")
    check("--act-quant int8 needs int8 weights", r.returncode == 1 and "int8 weights" in r.stderr, r.stderr)
    r = run(*BASE, "--quant", "int8", "--act-quant", "int8")
    check("--act-quant int8 with int8 weights works", r.returncode == 0 and r.stdout.startswith("Once upon a time"),
          r.stderr)
    r = run(*BASE, "--act-dtype", "fp16")
    check("--act-dtype refuses an unknown precision", r.returncode != 0 and "--act-dtype" in r.stderr, r.stderr)
    # bf16 weights read bf16-rounded activations unless --act-dtype fp32: the perplexity moves, but only a little.
    text = os.path.join(d, "text.txt")
    with open(text, "w") as f:
        f.write(FALLBACK_CALIB)
    ppl = {}
    for act in ("bf16", "fp32"):
        r = run("eval", "--model", STORY, "--tokenizer", TOK, "--text", text, "--json", "--threads", "2",
                "--quant", "bf16", "--act-dtype", act)
        out = json.loads(r.stdout) if r.returncode == 0 else {}
        check(f"eval --quant bf16 --act-dtype {act} works", out.get("act_dtype") == act, r.stderr)
        ppl[act] = out.get("perplexity", 0.0)
    check("bf16 activations change the bf16 model's perplexity slightly",
          ppl["bf16"] != ppl["fp32"] and abs(ppl["bf16"] / max(ppl["fp32"], 1e-9) - 1) < 0.01, str(ppl))
    r = run(*BASE, "--quant", "int8", "--calib", os.path.join(d, "missing.txt"))
    check("--calib with a missing file fails clearly", r.returncode == 1 and "missing.txt" in r.stderr, r.stderr)

    # Rules: a rules file and rules on the command line, last match wins.
    rules = os.path.join(d, "rules.json")
    with open(rules, "w") as f:
        json.dump({"default": "int4:g64", "rules": [{"pattern": "lm_head", "scheme": "int8"},
                                                    {"pattern": "layers.0.*", "scheme": "bf16"}]}, f)
    report2 = os.path.join(d, "report2.json")
    r = run(*BASE, "--quant-rules", rules, "--quant-rule", "layers.0.wq=nf4:g32", "--quant-report", report2)
    schemes = {t["name"]: t["scheme"] for t in json.load(open(report2))["tensors"]} if r.returncode == 0 else {}
    check("rules file + --quant-rule", schemes.get("lm_head") == "int8" and schemes.get("layers.0.wk") == "bf16"
          and schemes.get("layers.0.wq") == "nf4:g32" and schemes.get("layers.1.wq") == "int4:g64"
          and schemes.get("tok_embeddings") == "int4:g64", f"{schemes} {r.stderr}")

    # Activation-aware int4.
    calib = CALIB_TEXT
    if not os.path.exists(calib):
        calib = os.path.join(d, "calib.txt")
        with open(calib, "w") as f:
            f.write(FALLBACK_CALIB)
    r = run(*BASE, "--quant", "bf16", "--calib", calib)
    check("--calib without int4/nf4 weights fails", r.returncode == 1 and "int4" in r.stderr, r.stderr)
    report3 = os.path.join(d, "report3.json")
    awq = run(*BASE, "--quant", "int4:g32", "--calib", calib, "--calib-tokens", "600", "--quant-report", report3)
    alphas = {}
    if awq.returncode == 0:
        alphas = {t["name"]: t.get("awq_alpha") for t in json.load(open(report3))["tensors"]}
    check("generate --calib works and reports alphas", awq.returncode == 0 and awq.stdout.startswith("Once upon a time")
          and "activation-aware on 600 tokens" in awq.stderr
          and all(a is not None and 0 <= a <= 1 for n, a in alphas.items() if n.startswith("layers."))
          and alphas.get("tok_embeddings") is None, awq.stderr + str(alphas))

    # tessera quantize --out, then --model OUT: same greedy text as quantizing at load.
    out = os.path.join(d, "q4")
    r = run("quantize", "--model", STORY, "--tokenizer", TOK, "--quant", "int4:g32", "--out", out)
    check("tessera quantize --out works", r.returncode == 0 and os.path.exists(os.path.join(out, "model.safetensors"))
          and os.path.exists(os.path.join(out, "config.json"))
          and os.path.exists(os.path.join(out, "tokenizer.model")), r.stderr)
    g = run(*GEN, "--model", out)  # tokenizer found in the directory
    check("--model OUT gives the same greedy text as --quant", g.returncode == 0 and g.stdout == q.stdout,
          f"{g.stdout!r}\nvs\n{q.stdout!r}\n{g.stderr}")
    check("--model OUT does not quantize again", "weights of" not in g.stderr, g.stderr)
    r = run("quantize", "--model", STORY, "--tokenizer", TOK, "--quant", "int4:g32", "--out", out)
    check("quantize refuses to overwrite without --force", r.returncode == 1 and "--force" in r.stderr, r.stderr)
    r = run("quantize", "--model", out, "--out", out, "--force")
    check("quantize refuses to write over its input", r.returncode == 1 and "where the model is read from" in r.stderr,
          r.stderr)

    out_awq = os.path.join(d, "awq")
    r = run("quantize", "--model", STORY, "--tokenizer", TOK, "--quant", "int4:g32", "--calib", calib,
            "--calib-tokens", "600", "--out", out_awq)
    g = run(*GEN, "--model", out_awq)
    check("quantize --calib then --model OUT matches --calib at load", r.returncode == 0 and g.returncode == 0
          and g.stdout == awq.stdout, f"{g.stdout!r}\nvs\n{awq.stdout!r}\n{r.stderr}{g.stderr}")

    # Mixed schemes and an f32 rewrite (a plain conversion to the format) round-trip too.
    out_mixed = os.path.join(d, "mixed")
    mixed = ["--quant", "nf4:g64", "--quant-rule", "lm_head=int8", "--quant-rule", "layers.4.*=f16"]
    r = run("quantize", "--model", STORY, "--tokenizer", TOK, *mixed, "--out", out_mixed)
    g = run(*GEN, "--model", out_mixed)
    direct = run(*BASE, *mixed)
    check("mixed schemes round-trip", r.returncode == 0 and g.returncode == 0 and g.stdout == direct.stdout,
          f"{g.stdout!r} vs {direct.stdout!r} {r.stderr} {g.stderr}")
    out_fp = os.path.join(d, "fp")
    r = run("quantize", "--model", STORY, "--tokenizer", TOK, "--out", out_fp)
    g = run(*GEN, "--model", out_fp)
    check("plain conversion round-trips exactly", r.returncode == 0 and g.stdout == fp.stdout,
          f"{g.stdout!r} vs {fp.stdout!r} {r.stderr} {g.stderr}")

    # Dummy weights quantize without a tokenizer.
    r = run("generate", "--dummy-weights", "--preset", "llama-110m", "--quant", "int4:g128", "--prompt-ids", "1,5,9",
            "-n", "3", "--threads", "2")
    check("dummy preset with --quant", r.returncode == 0 and len(r.stdout.split()) == 3, r.stdout + r.stderr)
    r = run("generate", "--dummy-weights", "--preset", "llama-110m", "--quant", "int4", "--calib", calib,
            "--prompt-ids", "1", "-n", "1")
    check("--calib without a tokenizer fails clearly", r.returncode == 1 and "tokenizer" in r.stderr, r.stderr)

    # A saved int4 model is read once: the CPU backend's panel layout replaces the rows rather than sitting beside
    # them. Peak RSS of a generation (measured in a fresh interpreter so earlier children do not count) against
    # the file: with a second copy it was 2.1x the file (162 MB for 75 MB), loaded once 1.2x.
    out_110m = os.path.join(d, "llama-110m-int4")
    r = run("quantize", "--dummy-weights", "--preset", "llama-110m", "--quant", "int4:g32", "--out", out_110m)
    file_bytes = os.path.getsize(os.path.join(out_110m, "model.safetensors"))
    probe = ("import resource, subprocess, sys; "
             "r = subprocess.run(sys.argv[1:], capture_output=True); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    m = subprocess.run([sys.executable, "-c", probe, TESSERA, "generate", "--model", out_110m, "--prompt-ids",
                        "1,5,9", "-n", "2", "--threads", "2"], capture_output=True, text=True, timeout=300)
    fields = m.stdout.split()
    peak = int(fields[1]) * 1024 if len(fields) == 2 and fields[0] == "0" else None
    check("a saved int4 model is held once in memory", r.returncode == 0 and peak is not None
          and peak < 1.5 * file_bytes, f"peak RSS {peak} for a {file_bytes}-byte file; {r.stderr} {m.stdout}")

print(f"{len(failures)} failed" if failures else "all quantization CLI checks passed")
sys.exit(1 if failures else 0)
