#!/usr/bin/env python3
"""The quality ordering of the load-time quantization schemes on stories260K.

  test_quant_ordering.py TESSERA MODELS_DIR SOURCE_DIR [--max-tokens N]

Runs `tessera eval --json` on the held-out evaluation text (docs/data/stories260K-t1-eval.txt, sampled from the
model at temperature 1) with --reference = the same checkpoint uncompressed, and checks, with KL = mean
KL(P_f32 || P_quantized) per token:
  * KL(int8) < KL(int4:g32) < KL(int4:g128);
  * KL(int4:gG:asym) <= KL(int4:gG) for G = 32 and 128;
  * activation-aware int4:g128 (--calib docs/data/stories260K-t1-calib.txt, a text disjoint from the evaluation
    text) has KL <= round-to-nearest int4:g128;
  * sanity: every quantized run scores the same tokens, has KL > 0, and stores fewer weight bytes than f32;
    --quant f32 reproduces the uncompressed model (KL 0).
Exits 77 (skip) when stories260K is missing; 1 on any failure.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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
    configs = [("f32", ["--quant", "f32"]), ("int8", ["--quant", "int8"]), ("int4:g32", ["--quant", "int4:g32"]),
               ("int4:g32:asym", ["--quant", "int4:g32:asym"]), ("int4:g128", ["--quant", "int4:g128"]),
               ("int4:g128:asym", ["--quant", "int4:g128:asym"]),
               ("int4:g128 awq", ["--quant", "int4:g128", "--calib", CALIB])]
    print(f"{'scheme':<16} {'weight bytes':>12} {'perplexity':>11} {'KL':>11} {'top-1':>7} {'seconds':>8}")
    for name, flags in configs:
        r = evaluate(*flags)
        runs[name] = r
        print(f"{name:<16} {int(r['weight_bytes']):>12} {r['perplexity']:>11.5f} {r['kl_divergence']:>11.4e} "
              f"{r['top1_agreement']:>7.4f} {r['seconds']:>8.2f}", flush=True)
    kl = {k: v["kl_divergence"] for k, v in runs.items()}

    base = runs["f32"]
    check("--quant f32 is the uncompressed model (KL 0, top-1 1)",
          kl["f32"] < 1e-12 and base["top1_agreement"] == 1.0, base)
    for name, r in runs.items():
        if name == "f32":
            continue
        check(f"{name}: same {base['tokens']} tokens scored", r["tokens"] == base["tokens"], r["tokens"])
        check(f"{name}: KL > 0", kl[name] > 0.0, kl[name])
        check(f"{name}: fewer weight bytes than f32 ({int(r['weight_bytes'])} < {int(base['weight_bytes'])})",
              r["weight_bytes"] < base["weight_bytes"])
    check(f"KL(int8) {kl['int8']:.3e} < KL(int4:g32) {kl['int4:g32']:.3e}", kl["int8"] < kl["int4:g32"])
    check(f"KL(int4:g32) {kl['int4:g32']:.3e} < KL(int4:g128) {kl['int4:g128']:.3e}",
          kl["int4:g32"] < kl["int4:g128"])
    for g in (32, 128):
        a, s = kl[f"int4:g{g}:asym"], kl[f"int4:g{g}"]
        check(f"KL(int4:g{g}:asym) {a:.3e} <= KL(int4:g{g}) {s:.3e}", a <= s)
    check(f"KL(activation-aware int4:g128) {kl['int4:g128 awq']:.3e} <= KL(RTN int4:g128) {kl['int4:g128']:.3e}",
          kl["int4:g128 awq"] <= kl["int4:g128"])
    print(f"{len(failures)} failure(s)" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"FAIL {e}")
        sys.exit(1)
