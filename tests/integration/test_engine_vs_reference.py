#!/usr/bin/env python3
"""End-to-end correctness: the engine's logits against the independent NumPy reference, at every position.

  test_engine_vs_reference.py --dump-logits BUILD/bin/tessera_dump_logits [--models DIR] [--keep DIR]
                              [--only SUBSTRING]

For tiny random checkpoints written on the fly (MHA, GQA, MQA, tied/untied, Qwen2 q/k/v biases, Mistral,
Llama-3 rope_scaling, f32/f16/bf16 storage, sharded safetensors, a config.json relying on defaults, an
rms_norm_eps-sensitive model, llama2.c v0/v1, 12 random odd shapes with a fixed seed) and for the trained models
in the shared models folder (stories260K, also converted to a bf16 HF directory, and llama2xs-279K; skipped with
a message when absent):
  * engine (prefill, LogitsMode::kAll) vs reference for prompts of 1, 2, 7 and 23+ tokens (up to 300, with
    lengths around 16/32/64/128 for the long ones): the relative L2 error ||engine_i - ref_i|| / ||ref_i|| of
    every position i must be < 1e-4;
  * the same with 2 and 3 threads, portable kernels, the reference backend, and a max batch of 4 rows (the
    model splits the prompt into chunks itself);
  * decode (one token at a time), chunked prefill (3 and 5 tokens per call) and generate (prefill with kLast,
    then decode; also with a max batch of 4) against prefill and against the reference, same tolerance;
  * the comparison can fail: the engine's logits must be far (> 100x the tolerance) from a reference with the
    other RoPE pairing;
  * stories260K: teacher-forced NLL of the fox sentence from the engine's logits == 54.40416 (PROVENANCE.md),
    and argmax at every position of BOS + the 40 published greedy ids reproduces those ids;
  * errors are errors: token ids -1 and vocab, and a KV cache one row too small (prefill and decode), exit with
    status 1 and a message (not a crash, not silent garbage).
Exits 1 on any failure, with a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REF_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "scripts", "reference"))

TOL = 1e-4
FOX = "One day, a clever fox found a shiny key under the old oak tree."
FOX_NLL = 54.40416
GREEDY40 = [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
            410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352]


class Runner:
    def __init__(self, tool, tmp):
        self.tool = tool
        self.tmp = tmp
        self.count = 0
        self.failures = []
        self.checks = 0

    def check(self, cond, what):
        self.checks += 1
        if not cond:
            self.failures.append(what)
            print("  FAIL " + what, flush=True)
        return cond

    def run_tool(self, model, tokens, **opts):
        """Runs tessera_dump_logits; returns (returncode, logits or None, stderr)."""
        import numpy as np
        self.count += 1
        out = os.path.join(self.tmp, f"logits{self.count}.npy")
        cmd = [self.tool, "--model", model, "--tokens", ",".join(str(t) for t in tokens), "--out", out]
        for k, v in opts.items():
            cmd += ["--" + k.replace("_", "-"), str(v)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return None, None, "timed out after 120 s: " + " ".join(cmd)
        if p.returncode != 0:
            return p.returncode, None, f"$ {' '.join(cmd)}\n{p.stderr.strip()}"
        a = np.load(out)
        os.remove(out)
        return 0, a, p.stderr

    def logits(self, model, tokens, label, **opts):
        rc, a, err = self.run_tool(model, tokens, **opts)
        if not self.check(rc == 0, f"{label}: tessera_dump_logits failed (rc {rc}):\n{indent(err)}"):
            return None
        return a


def indent(s, pad="      "):
    return "\n".join(pad + line for line in str(s).splitlines())


def rel_err(a, b):
    """Per-position relative L2 error: max over rows, and the row where it happens."""
    import numpy as np
    num = np.linalg.norm(a.astype(np.float64) - b, axis=1)
    den = np.maximum(np.linalg.norm(b, axis=1), 1e-30)
    e = num / den
    e[~np.isfinite(a).all(axis=1)] = np.inf
    i = int(np.argmax(e))
    return float(e[i]), i


def compare(r, got, want, label, rows=None):
    if got is None:
        return None
    if rows is not None:
        got, want = got[rows], want[rows]
    if not r.check(got.shape == want.shape, f"{label}: shape {got.shape}, expected {want.shape}"):
        return None
    e, i = rel_err(got, want)
    r.check(e < TOL, f"{label}: relative L2 error {e:.3e} at position {i} (tolerance {TOL:g})")
    return e


SHORT_LENGTHS = (1, 2, 7)
# Around the block sizes an attention or matmul kernel is likely to tile by.
LONG_LENGTHS = (1, 2, 7, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129)


def check_model(r, name, path, tokens, ref_cfg, ref_w, extra=None, quick=False, lengths=SHORT_LENGTHS):
    """All comparisons for one model and one prompt. Returns the engine's prefill logits."""
    import llama_reference as R
    t0 = time.time()
    n = len(tokens)
    ref = R.logits(ref_cfg, ref_w, tokens)
    worst = {}

    def note(key, e):
        if e is not None:
            worst[key] = max(worst.get(key, 0.0), e)

    # Prefill vs reference, several prompt lengths (each its own engine run: different shapes, same prefix).
    full = None
    for L in sorted({L for L in lengths if L < n} | {n}):
        a = r.logits(path, tokens[:L], f"{name}: prefill n={L}", threads=1)
        note("prefill t1", compare(r, a, ref[:L], f"{name}: prefill n={L} threads=1 vs reference"))
        if L == n:
            full = a
    variants = [("prefill t2", dict(threads=2)), ("prefill t3", dict(threads=3)),
                ("prefill portable", dict(threads=2, kernels="portable")),
                ("prefill ref-backend", dict(backend="reference")), ("prefill max-batch 4", dict(max_batch=4))]
    if quick:
        variants = variants[:1] + variants[3:4]
    for key, opts in variants:
        a = r.logits(path, tokens, f"{name}: {key}", **opts)
        note(key, compare(r, a, ref, f"{name}: {key} vs reference"))

    # Incremental execution vs one-shot prefill and vs reference.
    modes = [("decode", dict(mode="decode", threads=2), None),
             ("decode ref-backend", dict(mode="decode", backend="reference"), None),
             ("chunked 3", dict(mode="chunked", chunk=3, threads=2), None),
             ("chunked 5 t1", dict(mode="chunked", chunk=5, threads=1), None),
             ("generate", dict(mode="generate", split=min(7, n), threads=2), slice(min(7, n) - 1, None)),
             # kLast prefill split by the model into chunks of 4 rows: only the very last row is wanted.
             ("generate max-batch 4", dict(mode="generate", split=min(13, n), max_batch=4, threads=2),
              slice(min(13, n) - 1, None))]
    if quick:
        modes = modes[:1] + modes[2:3]
    for key, opts, rows in modes:
        a = r.logits(path, tokens, f"{name}: {key}", **opts)
        note(key + " vs ref", compare(r, a, ref, f"{name}: {key} vs reference", rows))
        if full is not None:
            note(key + " vs prefill", compare(r, a, full, f"{name}: {key} vs prefill", rows))

    # The comparison has teeth: a reference with the other RoPE pairing is far away.
    if full is not None and n > 1:
        other = R.ROPE_HALF if ref_cfg.rope_style == R.ROPE_INTERLEAVED else R.ROPE_INTERLEAVED
        wrong = R.logits(dataclasses.replace(ref_cfg, rope_style=other), ref_w, tokens)
        e, _ = rel_err(full[1:], wrong[1:])
        r.check(e > 100 * TOL, f"{name}: engine vs wrong-RoPE reference differs by only {e:.3e}: test has no power")
        worst["wrong rope"] = e

    if extra:
        extra(full)
    def worst_of(pred):
        items = [(v, k) for k, v in worst.items() if pred(k)]
        return f"{max(items)[0]:.1e} ({max(items)[1]})" if items else "-"

    vs_ref = worst_of(lambda k: not k.endswith("vs prefill") and k != "wrong rope")
    vs_prefill = worst_of(lambda k: k.endswith("vs prefill"))
    print(f"  {name}: n={n}: max error vs reference {vs_ref}, modes vs prefill {vs_prefill}, "
          f"wrong-RoPE reference {worst.get('wrong rope', float('nan')):.1e} [{time.time() - t0:.1f}s]", flush=True)
    return full


def tiny_cases(T):
    """(name, Spec, format, prompt length). Odd sizes throughout: dim 48, hidden 100, vocab 97, head_dim 12 or 8."""
    S = T.Spec
    return [
        ("mha-f32", S(n_heads=4, n_kv_heads=4, seed=1), "hf", 23),
        ("gqa-f32-untied", S(n_heads=4, n_kv_heads=2, seed=2), "hf", 23),
        ("gqa-f32-tied-hd8", S(n_heads=6, n_kv_heads=2, head_dim=8, tied=True, seed=3), "hf", 23),
        ("mqa-f16-3layers", S(n_heads=4, n_kv_heads=1, n_layers=3, dtype="f16", seed=4), "hf", 23),
        ("gqa-bf16-sharded2", S(n_heads=4, n_kv_heads=2, dtype="bf16", shards=2, seed=5), "hf", 23),
        ("mha-f32-sharded3-tied", S(n_heads=4, n_kv_heads=4, tied=True, shards=3, n_layers=3, seed=6), "hf", 23),
        ("qwen2-f32-tied", S(arch="qwen2", tied=True, rope_theta=1e6, rms_eps=1e-6, seed=7), "hf", 23),
        ("qwen2-bf16-untied-sharded2", S(arch="qwen2", dtype="bf16", shards=2, rms_eps=1e-6, seed=8), "hf", 23),
        ("mistral-f16-hd8", S(arch="mistral", n_heads=4, n_kv_heads=2, head_dim=8, dtype="f16", seed=9), "hf", 23),
        ("llama3-scaling-f32", S(rope_theta=500000.0, rope_scaling=T.llama3_scaling(), seed=10), "hf", 23),
        ("llama3-scaling-bf16-hd8-sharded2",
         S(head_dim=8, n_heads=6, n_kv_heads=3, rope_scaling=T.llama3_scaling(factor=4.0, original_max_position=32),
           dtype="bf16", shards=2, seed=11), "hf", 23),
        ("gqa-long", S(n_heads=4, n_kv_heads=2, max_seq_len=256, seed=17), "hf", 200),
        ("eps1e-3-small-embeddings", S(rms_eps=1e-3, embed_scale=0.03, seed=16), "hf", 23),
        ("minimal-config-defaults",
         S(n_heads=4, n_kv_heads=4, rms_eps=1e-6, embed_scale=0.03, minimal_config=True, seed=18), "hf", 23),
        ("llama2c-v0-gqa-untied", S(n_heads=4, n_kv_heads=2, seed=12), "llama2c", 23),
        ("llama2c-v0-mha-tied", S(n_heads=4, n_kv_heads=4, tied=True, seed=13), "llama2c", 23),
        ("llama2c-v1-gqa-untied", S(n_heads=4, n_kv_heads=2, seed=14), "llama2c-v1", 23),
        ("llama2c-v1-gqa-tied", S(n_heads=4, n_kv_heads=2, tied=True, seed=15), "llama2c-v1", 23),
    ]


def random_cases(T, count, seed):
    """Random shapes (odd dims, head_dim 4..64, hidden from 1, vocab from 3, 1-3 layers) with a fixed seed."""
    import numpy as np
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        kv, group = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        hd = int(rng.choice([4, 6, 10, 14, 16, 18, 34, 64]))
        arch = str(rng.choice(["llama", "mistral", "qwen2"]))
        fmt = str(rng.choice(["hf", "hf", "hf", "llama2c", "llama2c-v1"])) if arch == "llama" else "hf"
        scaling = T.llama3_scaling(factor=float(rng.choice([2.0, 8.0]))) if fmt == "hf" and rng.random() < 0.3 else None
        spec = T.Spec(arch=arch, dim=int(rng.integers(3, 90)), hidden_dim=int(rng.integers(1, 130)),
                      n_layers=int(rng.integers(1, 4)), n_heads=kv * group, n_kv_heads=kv, head_dim=hd,
                      vocab_size=int(rng.integers(3, 300)), max_seq_len=160, tied=bool(rng.random() < 0.5),
                      dtype=str(rng.choice(["f32", "f16", "bf16"])), shards=int(rng.integers(1, 4)),
                      rope_theta=float(rng.choice([10000.0, 500000.0])), rope_scaling=scaling, seed=len(cases))
        if arch == "qwen2" or fmt != "hf":  # these tie head_dim to dim / n_heads
            spec.dim, spec.head_dim = kv * group * hd, None
        if fmt != "hf":
            spec.rope_theta, spec.dtype = 10000.0, "f32"
        name = f"random{len(cases)}-{arch}-{fmt}-{spec.dtype}-d{spec.dim}-h{spec.n_heads}/{kv}x{hd}-f{spec.hidden_dim}"
        cases.append((name, spec, fmt, int(rng.integers(8, 150))))
    return cases


def check_errors(r, path, vocab):
    """User errors surface as tessera::Error (exit 1 with a message), not a crash."""
    rc, _, err = r.run_tool(path, [1, vocab], threads=1)
    r.check(rc == 1 and "error" in err, f"token id {vocab} (== vocab) must exit 1 with an error, got rc {rc}:\n"
            + indent(err))
    rc, _, err = r.run_tool(path, [1, 2, 3, 4], threads=1, cache_capacity=3)
    r.check(rc == 1 and "error" in err, f"4 tokens into a 3-row KV cache must exit 1 with an error, got rc {rc}:\n"
            + indent(err))
    rc, _, err = r.run_tool(path, [1, 2, 3, 4], mode="decode", threads=1, cache_capacity=3)
    r.check(rc == 1 and "error" in err, "decoding past the KV cache must exit 1 with an error, got rc "
            f"{rc}:\n" + indent(err))
    rc, _, err = r.run_tool(path, [1, -1], threads=1)
    r.check(rc == 1 and "error" in err, f"token id -1 must exit 1 with an error, got rc {rc}:\n" + indent(err))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump-logits", required=True, help="path of the tessera_dump_logits executable")
    ap.add_argument("--models", default=os.environ.get("TESSERA_MODELS", ""), help="shared models folder")
    ap.add_argument("--reference-dir", default=DEFAULT_REF_DIR)
    ap.add_argument("--keep", help="write checkpoints here and keep them (default: a temporary folder)")
    ap.add_argument("--only", help="run only cases whose name contains this")
    args = ap.parse_args()

    try:
        import numpy as np
    except ImportError:
        print("numpy is required: pip install -r scripts/reference/requirements.txt")
        return 1
    sys.path.insert(0, args.reference_dir)
    import llama_reference as R
    import make_tiny_checkpoint as T

    if not os.access(args.dump_logits, os.X_OK):
        print(f"{args.dump_logits}: not an executable")
        return 1
    tmp = args.keep or tempfile.mkdtemp(prefix="tessera-integration-")
    os.makedirs(tmp, exist_ok=True)
    r = Runner(args.dump_logits, tmp)
    t0 = time.time()
    rng = np.random.default_rng(1234)
    skipped = []
    try:
        print("tiny random checkpoints:")
        first_path = None
        for name, spec, fmt, n_tokens in tiny_cases(T):
            if args.only and args.only not in name:
                continue
            path = os.path.join(tmp, name + (".bin" if fmt.startswith("llama2c") else ""))
            T.write(spec, path, fmt)
            cfg, w = R.load(path)
            # Edge ids included: 0 and vocab-1.
            tokens = [1, 0, spec.vocab_size - 1] + [int(t) for t in rng.integers(0, spec.vocab_size, n_tokens - 3)]
            check_model(r, name, path, tokens, cfg, w, lengths=LONG_LENGTHS if n_tokens > 100 else SHORT_LENGTHS)
            first_path = first_path or path
        if first_path:
            check_errors(r, first_path, 97)

        print("random shapes:")
        for name, spec, fmt, n_tokens in random_cases(T, 12, seed=2024):
            if args.only and args.only not in name:
                continue
            path = os.path.join(tmp, name.replace("/", "_") + (".bin" if fmt.startswith("llama2c") else ""))
            T.write(spec, path, fmt)
            cfg, w = R.load(path)
            tokens = [int(t) for t in rng.integers(0, spec.vocab_size, n_tokens)]
            check_model(r, name, path, tokens, cfg, w, quick=True)

        models = args.models
        print(f"trained models from {models or '(none given)'}:")
        stories = os.path.join(models, "stories260K", "stories260K.bin") if models else ""
        if not (args.only and args.only not in "stories260K"):
            if stories and os.path.exists(stories):
                check_stories(r, R, T, stories, tmp)
            else:
                skipped.append(f"stories260K ({stories or 'no --models'} not found)")
        xs = os.path.join(models, "llama2xs-279K", "model.bin") if models else ""
        if not (args.only and args.only not in "llama2xs-279K"):
            if xs and os.path.exists(xs):
                cfg, w = R.load(xs)
                toks = [1] + [int(t) for t in rng.integers(3, 512, 47)]
                check_model(r, "llama2xs-279K", xs, toks, cfg, w, quick=True)
            else:
                skipped.append(f"llama2xs-279K ({xs or 'no --models'} not found)")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    for s in skipped:
        print(f"SKIPPED: {s}")
    print(f"\n{r.checks} checks, {r.count} engine runs, {time.time() - t0:.1f}s: "
          f"{len(r.failures)} failure(s)")
    for f in r.failures:
        print("  - " + f.splitlines()[0])
    return 1 if r.failures else 0


def check_stories(r, R, T, path, tmp):
    import numpy as np
    cfg, w = R.load(path)
    try:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=os.path.join(os.path.dirname(path), "tok512.model"))
        fox = [1] + sp.encode(FOX)
    except ImportError:
        fox = None
        print("  (sentencepiece not installed: fox NLL check skipped)")

    def nll_check(full):
        if full is None:
            return
        nll = R.teacher_forced_nll(full.astype(np.float64), fox)
        r.check(abs(nll - FOX_NLL) < 1e-3, f"stories260K: engine fox NLL {nll:.5f}, published {FOX_NLL}")
        print(f"  stories260K: engine teacher-forced NLL {nll:.5f} (published {FOX_NLL})")

    if fox is not None:
        r.check(len(fox) == 35, f"fox sentence encodes to {len(fox)} tokens with BOS, expected 35")
        check_model(r, "stories260K fox", path, fox, cfg, w, extra=nll_check)

    greedy_in = [1] + GREEDY40[:-1]

    def greedy_check(full):
        if full is None:
            return
        am = [int(i) for i in full.argmax(axis=1)]
        r.check(am == GREEDY40, f"stories260K: engine argmax over BOS+greedy ids != published greedy ids: {am}")

    check_model(r, "stories260K greedy40", path, greedy_in, cfg, w, extra=greedy_check, quick=True)
    # The same model as a (2-shard, bf16) Hugging Face directory: rotate_half RoPE with permuted q/k rows.
    hf = T.llama2c_to_hf(path, os.path.join(tmp, "stories260K-hf-bf16"), dtype="bf16", shards=2)
    hcfg, hw = R.load(hf)
    check_model(r, "stories260K as HF bf16", hf, greedy_in, hcfg, hw, quick=True)
    long_prompt = [1] + [int(t) for t in np.random.default_rng(99).integers(3, 512, 299)]
    check_model(r, "stories260K long", path, long_prompt, cfg, w, quick=True, lengths=LONG_LENGTHS + (256, 257))


if __name__ == "__main__":
    sys.exit(main())
