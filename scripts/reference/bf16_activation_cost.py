#!/usr/bin/env python3
"""What rounding the activations to bfloat16 before every linear layer costs a bf16 model, by the NumPy reference.

Kernels such as AVX-512 BF16's vdpbf16ps multiply bf16 by bf16 (twice the products per instruction of an fp32
FMA), so a bf16-weight model run through them sees its activations rounded to bf16 as well. This measures that
rounding alone: the checkpoint's matrices are rounded to bf16 (the bf16 model), then the same windows are run with
fp32 activations and with every linear layer's input rounded to bf16, and the two next-token distributions are
compared (KL(fp32 act || bf16 act), top-1 agreement, perplexity of each) as `tessera eval --reference` does.

  bf16_activation_cost.py MODEL TOKENIZER.model TEXT [--tokens 4096] [--window 256]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as R  # noqa: E402
from make_tiny_checkpoint import f32_to_bf16_bits  # noqa: E402


def to_bf16(a: np.ndarray) -> np.ndarray:
    return (f32_to_bf16_bits(a).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("tokenizer")
    ap.add_argument("text")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens scored (from the start of the text)")
    ap.add_argument("--window", type=int, default=256, help="tokens per independent window")
    args = ap.parse_args(argv)

    import sentencepiece as spm

    cfg, weights = R.load(args.model)
    weights = {k: to_bf16(v) if v.ndim == 2 else v for k, v in weights.items()}
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    with open(args.text, encoding="utf-8") as f:
        ids = [sp.bos_id()] + sp.encode(f.read())
    ids = ids[: args.tokens]
    kl_sum, agree, scored, predicted, nll = 0.0, 0, 0, 0, [0.0, 0.0]
    for start in range(0, len(ids), args.window):
        t = ids[start : start + args.window]
        if len(t) < 2:
            break
        lp = [R.log_softmax(R.logits(cfg, weights, t, act_round=r)) for r in (None, to_bf16)]
        kl_sum += float((np.exp(lp[0]) * (lp[0] - lp[1])).sum(axis=-1).sum())
        agree += int((lp[0].argmax(-1) == lp[1].argmax(-1)).sum())
        scored += len(t)
        predicted += len(t) - 1
        for j in range(2):
            nll[j] += -sum(lp[j][i, t[i + 1]] for i in range(len(t) - 1))
    print(f"{scored} positions: KL(fp32 act || bf16 act) {kl_sum / scored:.3e} nats/token, "
          f"top-1 agreement {100.0 * agree / scored:.2f} %, perplexity fp32 act {math.exp(nll[0] / predicted):.5f}, "
          f"bf16 act {math.exp(nll[1] / predicted):.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
