"""Shared by the quality-ordering tests: their command line, the stories260K paths, `tessera eval --json` against
the uncompressed model on the held-out text, and a check() that records failures.

    args = parse_args()                 # TESSERA MODELS_DIR SOURCE_DIR [--max-tokens N]
    ev = StoriesEval(args)
    if not ev.model_present(): ...      # skip (77)
    r = ev.evaluate("--quant", "int8")  # {"perplexity", "kl_divergence", "top1_agreement", "tokens", ...}
    ev.check("int8 beats int4", r["kl_divergence"] < ...)
"""
import argparse
import json
import os
import subprocess


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("tessera")
    ap.add_argument("models")
    ap.add_argument("source")
    ap.add_argument("--max-tokens", type=int, default=0, help="evaluate only the first N tokens (0 = all)")
    return ap.parse_args()


class StoriesEval:
    def __init__(self, args):
        self.tessera = args.tessera
        self.max_tokens = args.max_tokens
        self.models = os.environ.get("TESSERA_MODELS", args.models)
        self.model = os.path.join(self.models, "stories260K", "stories260K.bin")
        self.tokenizer = os.path.join(self.models, "stories260K", "tok512.model")
        self.text = os.path.join(args.source, "docs", "data", "stories260K-t1-eval.txt")
        self.calib = os.path.join(args.source, "docs", "data", "stories260K-t1-calib.txt")
        self.failures = []

    def model_present(self):
        return os.path.exists(self.model)

    def check(self, name, cond, detail=""):
        print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"\n     {detail}"), flush=True)
        if not cond:
            self.failures.append(name)
        return cond

    def evaluate(self, *flags, timeout=600):
        cmd = [self.tessera, "eval", "--model", self.model, "--tokenizer", self.tokenizer, "--text", self.text,
               "--reference", self.model, "--json", *flags]
        if self.max_tokens:
            cmd += ["--max-tokens", str(self.max_tokens)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"$ {' '.join(cmd)}\nexit {p.returncode}\n{p.stderr}")
        return json.loads(p.stdout)
