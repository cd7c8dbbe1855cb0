#!/usr/bin/env python3
"""Greedy decoding of stories260K from BOS must print exactly llama2.c's published output.

greedy-200.txt is the expected_stdout of karpathy/llama2.c test_all.py: `run stories260K.bin -z tok512.bin
-t 0.0 -n 200`. run.c runs the model at positions 0..199 (BOS at 0) and prints the token sampled at each, so
that is 200 generated tokens: `-n 200` here. Exit 77 (skip) without the models.
"""
import os
import subprocess
import sys


def main() -> int:
    tessera, models = sys.argv[1], sys.argv[2]
    models = os.environ.get("TESSERA_MODELS", models)
    base = os.path.join(models, "stories260K")
    golden_path = os.path.join(base, "greedy-200.txt")
    if not os.path.exists(golden_path):
        print(f"SKIP: {golden_path} not found (set TESSERA_MODELS to the shared models folder)")
        return 77
    golden = open(golden_path, "rb").read()
    failures = 0
    for tokenizer in ("tok512.model", "tok512.bin"):
        for threads in ("1", "2"):
            cmd = [tessera, "generate", "--model", os.path.join(base, "stories260K.bin"),
                   "--tokenizer", os.path.join(base, tokenizer), "--temperature", "0", "-n", "200",
                   "--threads", threads]
            run = subprocess.run(cmd, capture_output=True, timeout=120)
            label = f"{tokenizer}, {threads} threads"
            if run.returncode != 0:
                print(f"FAIL ({label}): exit {run.returncode}\n{run.stderr.decode(errors='replace')}")
                failures += 1
            elif run.stdout != golden:
                common = next((i for i, (a, b) in enumerate(zip(run.stdout, golden)) if a != b),
                              min(len(run.stdout), len(golden)))
                print(f"FAIL ({label}): output differs from greedy-200.txt at byte {common}\n"
                      f"  got:      {run.stdout[max(0, common - 40):common + 40]!r}\n"
                      f"  expected: {golden[max(0, common - 40):common + 40]!r}")
                failures += 1
            else:
                print(f"ok ({label}): {len(golden)} bytes identical; {run.stderr.decode().strip()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
