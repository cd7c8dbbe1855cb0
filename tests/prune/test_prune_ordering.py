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
Exits 77 (skip) when stories260K is missing; 1 on any failure.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "quality"))
from stories_eval import StoriesEval, parse_args  # noqa: E402

args = parse_args()
EV = StoriesEval(args)
MODEL, MODELS, CALIB = EV.model, EV.models, EV.calib
failures = EV.failures
check = EV.check
evaluate = EV.evaluate


def main():
    if not os.path.exists(MODEL):
        print(f"SKIP: stories260K not found in {MODELS}")
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
