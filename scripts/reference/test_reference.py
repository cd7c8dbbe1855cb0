#!/usr/bin/env python3
"""Self-checks of the NumPy reference and the tiny-checkpoint writer (plain Python, no pytest needed).

  python3 scripts/reference/test_reference.py [--models DIR]

Checks the reference against the numbers published in stories260K/PROVENANCE.md (teacher-forced NLL of the
fox sentence, first 40 greedy ids), that the llama2.c and Hugging Face paths (interleaved vs rotate_half RoPE)
compute the same function, that written safetensors files are readable by the `safetensors` package, bf16
rounding, and the Llama-3 frequency bands. Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import struct
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llama_reference as R  # noqa: E402
import make_tiny_checkpoint as T  # noqa: E402

FOX = "One day, a clever fox found a shiny key under the old oak tree."
FOX_NLL = 54.40416
GREEDY40 = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
            410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352]

failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_stories(models):
    d = os.path.join(models, "stories260K")
    if not os.path.isdir(d):
        print(f"skip  stories260K: {d} not found")
        return
    import sentencepiece as spm
    m = R.Model(os.path.join(d, "stories260K.bin"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "tok512.model"))
    toks = [1] + sp.encode(FOX)
    check(len(toks) == 35, f"fox sentence is 35 tokens with BOS (got {len(toks)})")
    nll = R.teacher_forced_nll(m.logits(toks), toks)
    check(abs(nll - FOX_NLL) < 1e-4, f"stories260K fox NLL {nll:.5f} == {FOX_NLL}")
    g = m.greedy([1], 40)
    check(g == GREEDY40, "stories260K first 40 greedy ids from BOS")
    with tempfile.TemporaryDirectory() as tmp:
        hf = T.llama2c_to_hf(os.path.join(d, "stories260K.bin"), os.path.join(tmp, "hf"), shards=2)
        e = rel(R.Model(hf).logits(toks), m.logits(toks))
        check(e < 1e-12, f"stories260K as HF (rotate_half, 2 shards) == llama2.c (interleaved): rel {e:.2e}")


def test_formats():
    with tempfile.TemporaryDirectory() as tmp:
        toks = [1, 5, 96, 0, 33, 7, 7, 50, 2, 11, 64, 80, 3]
        for tied in (False, True):
            spec = T.Spec(tied=tied, seed=3)
            hf = T.write_hf(spec, os.path.join(tmp, f"hf{tied}"))
            ref = R.Model(hf).logits(toks)
            for version in (0, 1):
                path = T.write_llama2c(spec, os.path.join(tmp, f"v{version}{tied}.bin"), version)
                cfg, _ = R.load(path)
                check(cfg.tied_embeddings == tied, f"llama2.c v{version} tied={tied}: tied flag read back")
                e = rel(R.Model(path).logits(toks), ref)
                check(e < 1e-12, f"llama2.c v{version} tied={tied} == HF f32: rel {e:.2e}")
            for dtype in ("f16", "bf16"):
                spec2 = dataclasses.replace(spec, dtype=dtype, shards=3)
                d2 = T.write_hf(spec2, os.path.join(tmp, f"hf{tied}{dtype}"))
                e = rel(R.Model(d2).logits(toks), ref)
                # Rounding changes the model a little, not completely.
                check(1e-6 < e < 0.2, f"HF {dtype} 3 shards vs f32: rel {e:.2e} (small but nonzero)")

        # Files readable by the safetensors package itself.
        from safetensors import safe_open
        from safetensors.numpy import load_file
        for dtype in ("f32", "f16", "bf16"):
            d = T.write_hf(T.Spec(dtype=dtype, arch="qwen2", tied=True), os.path.join(tmp, "st" + dtype))
            p = os.path.join(d, "model.safetensors")
            with safe_open(p, framework="np") as f:
                keys = set(f.keys())
            check("model.layers.0.self_attn.q_proj.bias" in keys and "lm_head.weight" not in keys,
                  f"safetensors package opens {dtype} file, Qwen2 biases present, tied lm_head absent")
            if dtype != "bf16":
                a = load_file(p)["model.layers.1.mlp.down_proj.weight"]
                w = T.random_weights(T.Spec(arch="qwen2", tied=True))["model.layers.1.mlp.down_proj.weight"]
                check(np.array_equal(a, w.astype(a.dtype)), f"safetensors package reads {dtype} values back")
            else:
                r = R.read_safetensors(p)["model.layers.1.mlp.down_proj.weight"]
                w = T.random_weights(T.Spec(arch="qwen2", tied=True))["model.layers.1.mlp.down_proj.weight"]
                e = float(np.max(np.abs(r - w) / np.maximum(np.abs(w), 1e-30)))
                check(e <= 2.0 ** -8, f"bf16 values read back within half an ulp: max rel {e:.2e}")


def test_bf16_rounding():
    def bits(u):
        return int(T.f32_to_bf16_bits(np.array([u], dtype=np.uint32).view(np.float32))[0])

    check(bits(0x3F800000) == 0x3F80, "bf16: 1.0 exact")
    check(bits(0x3F808000) == 0x3F80, "bf16: tie rounds to even (down)")
    check(bits(0x3F818000) == 0x3F82, "bf16: tie rounds to even (up)")
    check(bits(0x3F808001) == 0x3F81, "bf16: above half rounds up")
    check(bits(0xBF807FFF) == 0xBF80, "bf16: below half rounds down (negative)")


def test_llama3_bands():
    cfg = R.Config(head_dim=12, rope_theta=10000.0, rope_scaling={"factor": 8.0, "low_freq_factor": 1.0,
                                                                   "high_freq_factor": 4.0,
                                                                   "original_max_position": 64})
    base = 1.0 / 10000.0 ** (np.arange(0, 12, 2) / 12)
    got = R.rope_inverse_frequencies(cfg)
    wl = 2 * math.pi / base
    # wavelengths 6.3 (< 16: kept), 29.2 (16..64: interpolated), >= 135 (> 64: divided by 8)
    check(got[0] == base[0], "llama3 scaling keeps the high-frequency band")
    s = (64 / wl[1] - 1.0) / 3.0
    check(abs(got[1] - ((1 - s) * base[1] / 8 + s * base[1])) < 1e-15 and base[1] / 8 < got[1] < base[1],
          "llama3 scaling interpolates the middle band")
    check(np.allclose(got[2:], base[2:] / 8, rtol=0, atol=0), "llama3 scaling divides the low band by factor")


def test_sensitivity():
    """Wrong-model variants must differ from the right one by far more than the 1e-4 test tolerance."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in T.PRESETS.items():
            cfg, w = R.load(T.write_hf(spec, os.path.join(tmp, name)))
            toks = list(range(3, 26))
            ref = R.logits(cfg, w, toks)
            variants = {"interleaved rope": dataclasses.replace(cfg, rope_style=R.ROPE_INTERLEAVED),
                        "theta x2": dataclasses.replace(cfg, rope_theta=cfg.rope_theta * 2)}
            if cfg.rope_scaling:
                variants["no rope scaling"] = dataclasses.replace(cfg, rope_scaling=None)
            if cfg.rms_eps >= 1e-4:
                variants["rms_eps 1e-5"] = dataclasses.replace(cfg, rms_eps=1e-5)
            if cfg.qkv_bias:
                variants["no qkv bias"] = dataclasses.replace(cfg, qkv_bias=False)
            for vname, vcfg in variants.items():
                e = rel(R.logits(vcfg, w, toks)[1:], ref[1:])  # position 0 has no rotation to get wrong
                check(e > 1e-2, f"{name}: {vname} changes logits by rel {e:.2e}")


def main():
    ap = argparse.ArgumentParser()
    default_models = os.environ.get("TESSERA_MODELS", os.path.join(HERE, "..", "..", "..", "shared", "models"))
    ap.add_argument("--models", default=default_models)
    args = ap.parse_args()
    test_stories(os.path.abspath(args.models))
    test_formats()
    test_bf16_rounding()
    test_llama3_bands()
    test_sensitivity()
    print(f"\n{len(failures)} failure(s)" + "".join("\n  " + f for f in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
