#!/usr/bin/env python3
"""End-to-end checks of `tessera eval` on stories260K.

  test_eval_stories260K.py TESSERA MODELS_DIR SOURCE_DIR

  * the fox sentence (PROVENANCE.md: [BOS] + 34 tokens in one window): `tessera eval --json` gives NLL sum
    54.40416 and perplexity 4.95364 (published), to 1e-4 relative;
  * a short text (greedy-200.txt, ~200 tokens) with sliding windows (ctx 64, stride 24) and in one window: the
    perplexity of stories260K and of a perturbed copy, and KL(stories260K || perturbed) and top-1 agreement,
    against the same quantities computed here with the NumPy reference forward (scripts/reference) on windows
    cut here with the Hugging Face scheme;
  * the model against itself: KL 0, top-1 agreement 1;
  * errors: a reference with another vocabulary, a window longer than the context, stride >= ctx, a missing text
    file: exit status 1 with a message.
Exits 77 (skip) when stories260K or numpy/sentencepiece are missing, 1 on any failure.
"""

import json
import os
import subprocess
import sys
import tempfile

TESSERA, MODELS, SOURCE = sys.argv[1], os.environ.get("TESSERA_MODELS", sys.argv[2]), sys.argv[3]
MODEL = os.path.join(MODELS, "stories260K", "stories260K.bin")
TOKENIZER = os.path.join(MODELS, "stories260K", "tok512.model")
FOX = "One day, a clever fox found a shiny key under the old oak tree."
FOX_NLL, FOX_PPL = 54.40416, 4.95364

failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"\n     {detail}"), flush=True)
    if not cond:
        failures.append(name)
    return cond


def run(*args, timeout=300):
    return subprocess.run([TESSERA, "eval", *args], capture_output=True, text=True, timeout=timeout)


def eval_json(*args):
    r = run(*args, "--json")
    if r.returncode != 0:
        raise RuntimeError(f"tessera eval {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return json.loads(r.stdout)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


def hf_windows(n, ctx, stride):
    """(begin, end, first scored target) per window, the Hugging Face perplexity loop."""
    out, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + ctx, n)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            return out
        begin += stride


def reference_metrics(R, np, model, ref, tokens, ctx, stride):
    """NLL of model and ref, KL(ref || model), top-1 agreement, computed with the NumPy forward."""
    nll = ref_nll = kl = 0.0
    agree = count = 0
    for begin, end, first in hf_windows(len(tokens), ctx, stride):
        window = tokens[begin:end]
        lm = R.log_softmax(R.logits(model[0], model[1], window))
        lr = R.log_softmax(R.logits(ref[0], ref[1], window))
        for j in range(first, end):
            row = j - 1 - begin
            nll -= lm[row, tokens[j]]
            ref_nll -= lr[row, tokens[j]]
            kl += float(np.sum(np.exp(lr[row]) * (lr[row] - lm[row])))
            agree += int(np.argmax(lm[row]) == np.argmax(lr[row]))
            count += 1
    return dict(tokens=count, nll=nll / count, ppl=float(np.exp(nll / count)), ref_ppl=float(np.exp(ref_nll / count)),
                kl=kl / count, top1=agree / count)


def perturbed_copy(np, src, dst, scale, seed):
    """stories260K with every float multiplied by (1 + scale * N(0, 1)): same vocabulary, different function."""
    raw = open(src, "rb").read()
    w = np.frombuffer(raw[28:], dtype="<f4").astype(np.float64)
    w = w * (1.0 + scale * np.random.default_rng(seed).standard_normal(w.shape))
    with open(dst, "wb") as f:
        f.write(raw[:28] + w.astype("<f4").tobytes())


def main():
    if not (os.path.exists(MODEL) and os.path.exists(TOKENIZER)):
        print(f"SKIP: stories260K not found in {MODELS}")
        return 77
    try:
        import numpy as np
        import sentencepiece as spm
    except ImportError as e:
        print(f"SKIP: {e} (pip install -r scripts/reference/requirements.txt)")
        return 77
    sys.path.insert(0, os.path.join(SOURCE, "scripts", "reference"))
    import llama_reference as R
    import make_tiny_checkpoint as T

    sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
    with tempfile.TemporaryDirectory(prefix="tessera-eval-") as tmp:
        # 1. The published fox-sentence numbers.
        fox = os.path.join(tmp, "fox.txt")
        with open(fox, "w") as f:
            f.write(FOX)
        r = eval_json("--model", MODEL, "--tokenizer", TOKENIZER, "--text", fox)
        check("fox: 34 predictions in one window", r["tokens"] == 34 and r["windows"] == 1, r)
        check(f"fox: NLL sum {r['nll_sum']:.5f} == {FOX_NLL}", rel(r["nll_sum"], FOX_NLL) < 1e-4, r)
        check(f"fox: perplexity {r['perplexity']:.5f} == {FOX_PPL}", rel(r["perplexity"], FOX_PPL) < 1e-4, r)
        check("fox: no reference, no KL keys", "kl_divergence" not in r and "top1_agreement" not in r, r)

        # 2. Short text, sliding windows, against the NumPy reference.
        text_path = os.path.join(MODELS, "stories260K", "greedy-200.txt")
        tokens = [sp.bos_id()] + sp.encode(open(text_path, encoding="utf-8").read())
        pert = os.path.join(tmp, "perturbed.bin")
        perturbed_copy(np, MODEL, pert, 0.05, 7)
        base_w, pert_w = R.load(MODEL), R.load(pert)
        for ctx, stride in ((64, 24), (256, 128)):
            want = reference_metrics(R, np, pert_w, base_w, tokens, ctx, stride)
            got = eval_json("--model", pert, "--tokenizer", TOKENIZER, "--text", text_path, "--reference", MODEL,
                            "--ctx", str(ctx), "--stride", str(stride), "--threads", "2")
            tag = f"greedy-200 ctx {ctx} stride {stride}"
            check(f"{tag}: {got['tokens']} tokens scored == {len(tokens) - 1} (same tokenization as SentencePiece)",
                  got["tokens"] == want["tokens"] == len(tokens) - 1 and got["text_tokens"] == len(tokens), got)
            check(f"{tag}: perturbed perplexity {got['perplexity']:.6f} vs NumPy {want['ppl']:.6f}",
                  rel(got["perplexity"], want["ppl"]) < 1e-4)
            check(f"{tag}: reference perplexity {got['reference_perplexity']:.6f} vs NumPy {want['ref_ppl']:.6f}",
                  rel(got["reference_perplexity"], want["ref_ppl"]) < 1e-4)
            check(f"{tag}: KL {got['kl_divergence']:.6e} vs NumPy {want['kl']:.6e}",
                  want["kl"] > 1e-3 and rel(got["kl_divergence"], want["kl"]) < 1e-3)
            check(f"{tag}: top-1 agreement {got['top1_agreement']:.4f} vs NumPy {want['top1']:.4f}",
                  abs(got["top1_agreement"] - want["top1"]) <= 1.0 / want["tokens"] + 1e-12)
            print(f"     {tag}: ppl {got['perplexity']:.4f} (ref {got['reference_perplexity']:.4f}), "
                  f"KL {got['kl_divergence']:.4e}, top-1 {got['top1_agreement']:.4f}")

        # 3. A model against itself.
        got = eval_json("--model", MODEL, "--tokenizer", TOKENIZER, "--text", text_path, "--reference", MODEL,
                        "--ctx", "64")
        check("self: KL 0 and top-1 agreement 1",
              got["kl_divergence"] < 1e-12 and got["top1_agreement"] == 1.0 and got["stride"] == 32, got)

        # 4. Errors users can act on.
        other = T.write(T.Spec(vocab_size=97, seed=1), os.path.join(tmp, "vocab97.bin"), "llama2c")
        e = run("--model", MODEL, "--tokenizer", TOKENIZER, "--text", text_path, "--reference", other)
        check("reference with another vocabulary is refused",
              e.returncode == 1 and "vocabulary" in e.stderr and "97" in e.stderr, e.stderr)
        e = run("--model", MODEL, "--tokenizer", TOKENIZER, "--text", text_path, "--ctx", "1024")
        check("window longer than the context is refused",
              e.returncode == 1 and "context length" in e.stderr, e.stderr)
        e = run("--model", MODEL, "--tokenizer", TOKENIZER, "--text", text_path, "--ctx", "64", "--stride", "64")
        check("stride >= ctx is refused", e.returncode == 1 and "stride" in e.stderr, e.stderr)
        e = run("--model", MODEL, "--tokenizer", TOKENIZER, "--text", os.path.join(tmp, "missing.txt"))
        check("missing text file", e.returncode == 1 and "missing.txt" in e.stderr, e.stderr)
        h = subprocess.run([TESSERA, "eval", "--help"], capture_output=True, text=True)
        missing = [o for o in ("--model", "--text", "--ctx", "--stride", "--max-tokens", "--reference",
                               "--reference-tokenizer", "--json", "--threads") if o not in h.stdout]
        check("eval --help lists its options", h.returncode == 0 and not missing, f"missing {missing}")

    print(f"{len(failures)} failure(s)" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
