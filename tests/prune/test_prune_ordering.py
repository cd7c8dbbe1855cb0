#!/usr/bin/env python3
"""The quality ordering of the load-time pruning methods on stories260K, and their storage.

  test_prune_ordering.py TESSERA MODELS_DIR SOURCE_DIR [--max-tokens N]

Runs `tessera eval --json` on the held-out evaluation text (docs/data/stories260K-t1-eval.txt) with --reference =
the same checkpoint unpruned, calibrating Wanda and SparseGPT on docs/data/stories260K-t1-calib.txt (disjoint from
the evaluation text), and checks, with KL = mean KL(P_dense || P_pruned) per token:
  * at 50% unstructured sparsity, KL(wanda) < KL(magnitude) and KL(sparsegpt) < KL(magnitude);
  * the same at 2:4;
  * 2:4 pruning with --quant int8 stores int8-2:4 weights, fewer bytes than dense int8;
  * structured-ffn:0.3 stores fewer bytes than the dense model, and the --quant-report names what was removed;
  * sanity: every run scores the same tokens and has KL > 0.
Exits 77 (skip) when stories260K is missing or the binary has no --prune; 1 on any failure.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("tessera")
ap.add_argument("models")
ap.add_argument("source")
ap.add_argument("--max-tokens", type=int, default=0, help="evaluate only the first N tokens (0 = all)")
args = ap.parse_args()

MODELS = os.environ.get("TESSERA_MODELS", args.models)
MODEL = os.path.join(MODELS, "stories260K", "stories260K.bin")
TOKENIZER = os.path.join(MODELS, "stories260K", "tok512.model")
TEXT = os.path.join(args.source, "docs", "data", "stories260K-t1-eval.txt")
CALIB = os.path.join(args.source, "docs", "data", "stories260K-t1-calib.txt")

failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"\n     {detail}"), flush=True)
    if not cond:
        failures.append(name)
    return cond


def evaluate(*flags):
    cmd = [args.tessera, "eval", "--model", MODEL, "--tokenizer", TOKENIZER, "--text", TEXT, "--reference", MODEL,
           "--json", *flags]
    if args.max_tokens:
        cmd += ["--max-tokens", str(args.max_tokens)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"$ {' '.join(cmd)}\nexit {p.returncode}\n{p.stderr}")
    return json.loads(p.stdout)


def main():
    if not os.path.exists(MODEL):
        print(f"SKIP: stories260K not found in {MODELS}")
        return 77
    h = subprocess.run([args.tessera, "eval", "--help"], capture_output=True, text=True)
    if "--prune" not in h.stdout:
        print("SKIP: this tessera binary has no --prune option on `tessera eval`")
        return 77

    runs = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        for s in ("0.5", "2:4"):
            flags = ["--prune", f"{method}:{s}"]
            if method != "magnitude":
                flags += ["--calib", CALIB]
            runs[f"{method}:{s}"] = evaluate(*flags)
    runs["magnitude:2:4 int8"] = evaluate("--prune", "magnitude:2:4", "--quant", "int8")
    runs["int8"] = evaluate("--quant", "int8")
    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "report.json")
        runs["structured-ffn:0.3"] = evaluate("--prune", "structured-ffn:0.3", "--quant-report", report_path)
        with open(report_path) as f:
            report = json.load(f)

    print(f"{'run':<22} {'weight bytes':>12} {'perplexity':>11} {'KL':>11} {'top-1':>7}  weights")
    for name, r in runs.items():
        print(f"{name:<22} {int(r['weight_bytes']):>12} {r['perplexity']:>11.5f} {r['kl_divergence']:>11.4e} "
              f"{r['top1_agreement']:>7.4f}  {r.get('weights', '')}", flush=True)
    kl = {k: v["kl_divergence"] for k, v in runs.items()}
    base_tokens = runs["magnitude:0.5"]["tokens"]
    for name, r in runs.items():
        check(f"{name}: same {base_tokens} tokens scored", r["tokens"] == base_tokens, r["tokens"])
        check(f"{name}: KL > 0", kl[name] > 0.0, kl[name])
    for s in ("0.5", "2:4"):
        for method in ("wanda", "sparsegpt"):
            check(f"KL({method}:{s}) {kl[f'{method}:{s}']:.3e} < KL(magnitude:{s}) {kl[f'magnitude:{s}']:.3e}",
                  kl[f"{method}:{s}"] < kl[f"magnitude:{s}"])
    r24 = runs["magnitude:2:4 int8"]
    check("2:4 + int8 is stored as int8-2:4", "int8-2:4" in r24.get("weights", ""), r24.get("weights"))
    check(f"2:4 + int8 weight bytes {int(r24['weight_bytes'])} < dense int8 {int(runs['int8']['weight_bytes'])}",
          r24["weight_bytes"] < runs["int8"]["weight_bytes"])
    st = runs["structured-ffn:0.3"]
    check(f"structured-ffn:0.3 weight bytes {int(st['weight_bytes'])} < dense {int(runs['magnitude:0.5']['weight_bytes'])}",
          st["weight_bytes"] < runs["magnitude:0.5"]["weight_bytes"])
    downs = [t for t in report["tensors"] if t["name"].endswith("w_down")]
    check("the report lists the removed FFN channels of every w_down",
          len(downs) > 0 and all(len(t.get("pruning", {}).get("removed_cols", [])) > 0 for t in downs), downs[:1])
    print(f"{len(failures)} failure(s)" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"FAIL {e}")
        sys.exit(1)
