#!/usr/bin/env python3
"""`mpirun -np N tessera generate --tp T --pp P` prints exactly what one process prints (stories260K, greedy),
for every layout of 2 and 4 ranks, plain, int4:g32, int8, magnitude 2:4 pruning and 2:4 + int8; with tensor
and pipeline parallelism also activation-aware int4, per-tensor magnitude and Wanda pruning calibrated on a text
(SparseGPT runs; its
exactness up to rounding is checked in sharded_model_test); and a bad layout or a pruning method that cannot run
per shard is refused with a clear error.

    generate_parallel_test.py TESSERA_BIN MODELS_DIR MPIEXEC
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile


def differing_layouts(mpi, gen, layouts, label):
    """Runs `gen` under mpiexec on each (tp, pp) layout; returns how many printed other than one process."""
    want = subprocess.run(gen, capture_output=True, text=True, check=True).stdout
    failures = 0
    for tp, pp in layouts:
        r = subprocess.run(mpi + ["-np", str(tp * pp)] + gen + ["--tp", str(tp), "--pp", str(pp)],
                           capture_output=True, text=True, timeout=240)
        same = r.returncode == 0 and r.stdout == want
        print(f"tp {tp} x pp {pp} {label}: {'same' if same else 'DIFFERENT'} (exit {r.returncode})")
        if not same:
            failures += 1
            print(r.stdout + r.stderr[-2000:])
    return failures


def main():
    tessera, models, mpiexec = sys.argv[1], sys.argv[2], sys.argv[3]
    models = os.environ.get("TESSERA_MODELS") or models
    model = os.path.join(models, "stories260K", "stories260K.bin")
    if not os.path.exists(model):
        print(f"SKIP: {model} not found (set TESSERA_MODELS)")
        return 77
    tok = os.path.join(models, "stories260K", "tok512.model")
    mpi = [mpiexec, "--oversubscribe", "--allow-run-as-root"]
    failures = 0
    calib = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "data",
                         "stories260K-t1-calib.txt")
    every = [(2, 1), (1, 2), (2, 2), (1, 4)]
    # Pruning per shard: magnitude 2:4 decides within a row and 4 inputs, so each rank prunes its slices as one
    # process would (int8: stored as compressed 2:4 with row scales shared across the split). Choices that need
    # the whole tensor (a per-tensor threshold, Wanda's rows of the row-parallel wo / w_down) are made on it,
    # gathered over the tensor-parallel group; the calibration pass runs the sharded model, and pipeline stages
    # calibrate in turn on the previous stage's pruned outputs. Activation-aware int4 calibrates the same way and
    # searches its scales on the whole tensors (wo / w_down split at column 32 with 2 tensor-parallel ranks).
    cases = [([], every), (["--quant", "int4:g32"], every), (["--quant", "int8"], every),
             (["--prune", "magnitude:2:4"], every), (["--prune", "magnitude:2:4", "--quant", "int8"], every),
             (["--prune", "magnitude:0.5"], [(2, 1), (4, 1), (2, 2)]),
             (["--prune", "wanda:0.5", "--calib", calib], [(2, 1), (4, 1), (1, 2), (2, 2), (1, 4)]),
             (["--prune", "wanda:2:4", "--quant", "int8", "--calib", calib], [(2, 1), (1, 2)]),
             (["--quant", "int4:g32", "--calib", calib], [(2, 1), (1, 2), (2, 2), (1, 4)])]
    for flags, layouts in cases:
        gen = [tessera, "generate", "--model", model, "--tokenizer", tok, "-p", "Once upon a time", "-n", "100",
               "--temperature", "0", "--threads", "1"] + flags
        failures += differing_layouts(mpi, gen, layouts, " ".join(flags))
    # Each rank writes its shard's --quant-report (FILE with .tpR-ppS before the extension).
    for layout, reports in ((["--tp", "2"], ["r.tp0-pp0.json", "r.tp1-pp0.json"]),
                            (["--pp", "2"], ["r.tp0-pp0.json", "r.tp0-pp1.json"])):
        tmp = tempfile.mkdtemp()
        r = subprocess.run(mpi + ["-np", "2", tessera, "generate", "--model", model, "--tokenizer", tok, "-p", "x",
                                  "-n", "8", "--prune", "sparsegpt:0.5", "--calib", calib, "--quant-report",
                                  os.path.join(tmp, "r.json")] + layout,
                           capture_output=True, text=True, timeout=240)
        sparsegpt_ran = r.returncode == 0 and "sparsegpt:0.5" in r.stderr and sorted(os.listdir(tmp)) == reports
        for f in reports if sparsegpt_ran else []:
            with open(os.path.join(tmp, f)) as fh:
                sparsegpt_ran = sparsegpt_ran and any(t.get("pruning") for t in json.load(fh)["tensors"])
        print(f"sparsegpt with {' '.join(layout)} runs, reports {os.listdir(tmp)}: {sparsegpt_ran}")
        shutil.rmtree(tmp)
        if not sparsegpt_ran:
            failures += 1
            print(r.stderr[-2000:])

    # Structured pruning chooses channels across whole tensors, so it runs once on one rank (`tessera quantize`);
    # the pruned model, its FFN narrower, then loads sharded.
    tmp = tempfile.mkdtemp()
    pruned = os.path.join(tmp, "pruned")
    subprocess.run([tessera, "quantize", "--model", model, "--tokenizer", tok, "--prune", "structured-ffn:0.25",
                    "--out", pruned], capture_output=True, text=True, check=True)
    gen = [tessera, "generate", "--model", pruned, "-p", "Once upon a time", "-n", "60", "--temperature", "0",
           "--threads", "1"]
    failures += differing_layouts(mpi, gen, [(2, 1), (1, 2)], "saved structured-ffn:0.25 model")
    shutil.rmtree(tmp)

    r = subprocess.run(mpi + ["-np", "3", tessera, "generate", "--model", model, "-p", "x", "--tp", "3"],
                       capture_output=True, text=True, timeout=120)
    refused = r.returncode != 0 and "--tp 3 does not divide the model's 8 attention heads" in r.stderr
    print(f"--tp 3 refused: {refused}")
    r = subprocess.run(mpi + ["-np", "3", tessera, "generate", "--model", model, "-p", "x", "--tp", "2"],
                       capture_output=True, text=True, timeout=120)
    refused2 = r.returncode != 0 and "= 2 ranks, but the job has 3" in r.stderr
    print(f"--tp 2 on 3 ranks refused: {refused2}")
    refused3 = True
    for flags, words in ((["--tp", "2", "--prune", "structured-ffn:0.3"], "chooses whole channels and heads"),
                         (["--pp", "2", "--prune", "magnitude-global:0.5"], "one threshold across tensors")):
        r = subprocess.run(mpi + ["-np", "2", tessera, "generate", "--model", model, "--tokenizer", tok, "-p", "x"]
                           + flags, capture_output=True, text=True, timeout=120)
        ok = r.returncode != 0 and words in r.stderr
        print(f"{' '.join(flags)} refused: {ok}")
        refused3 = refused3 and ok
    return 0 if failures == 0 and refused and refused2 and refused3 else 1


if __name__ == "__main__":
    sys.exit(main())
