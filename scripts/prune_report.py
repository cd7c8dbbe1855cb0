#!/usr/bin/env python3
"""Quality and size of the load-time pruning methods (alone and with quantization), from `tessera eval --json` runs.

  scripts/prune_report.py [--tessera build/bin/tessera] [--models DIR] [--text FILE] [--calib FILE]
                          [--threads N] [--max-tokens N] [--update docs/pruning.md] [--json OUT]

The protocol of scripts/quant_report.py: stories260K (default) on the evaluation text, --reference = the same
checkpoint unpruned; each row is one `tessera eval` run with --quant-report, from which the measured sparsity of the
projections (fraction of exact zeros over all layer weights, or of removed weights for structured pruning) is read.
Wanda and SparseGPT calibrate on --calib (a text disjoint from the evaluation text). Prints a Markdown table;
--update replaces the block between <!-- prune-report:begin --> and <!-- prune-report:end --> in the given file.
A configuration the binary cannot run gets a row saying so. Standard library only.
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile

from report_util import eval_command, generated_line, parse_report_args, publish, rel  # noqa: E402 (this folder is on sys.path)

C = "{calib}"


def calibrated(method):
    return ["--calib", C] if method in ("wanda", "sparsegpt") else []


# (label, extra flags)
RUNS = [("dense f32 (as stored, baseline)", [])]
for s in ("0.1", "0.3", "0.5", "0.7"):
    for m in ("magnitude", "wanda", "sparsegpt"):
        RUNS.append((f"{m} {int(float(s) * 100)}%", ["--prune", f"{m}:{s}", *calibrated(m)]))
RUNS.append(("magnitude-global 50%", ["--prune", "magnitude-global:0.5"]))
for nm in ("2:4", "4:8"):
    for m in ("magnitude", "wanda", "sparsegpt"):
        RUNS.append((f"{m} {nm}", ["--prune", f"{m}:{nm}", *calibrated(m)]))
for s in ("0.1", "0.2", "0.3", "0.4", "0.5"):
    RUNS.append((f"structured-ffn {int(float(s) * 100)}%", ["--prune", f"structured-ffn:{s}"]))
    RUNS.append((f"structured-ffn {int(float(s) * 100)}%, calibrated", ["--prune", f"structured-ffn:{s}", "--calib", C]))
RUNS.append(("structured 50% (FFN + KV groups), calibrated", ["--prune", "structured:0.5", "--calib", C]))
RUNS += [
    ("int8 (no pruning)", ["--quant", "int8"]),
    ("magnitude 2:4 + int8 (int8-2:4)", ["--prune", "magnitude:2:4", "--quant", "int8"]),
    ("wanda 2:4 + int8 (int8-2:4)", ["--prune", "wanda:2:4", "--calib", C, "--quant", "int8"]),
    ("sparsegpt 2:4 + int8 (int8-2:4)", ["--prune", "sparsegpt:2:4", "--calib", C, "--quant", "int8"]),
    ("int4:g32 (no pruning)", ["--quant", "int4:g32"]),
    ("wanda 50% + int4:g32", ["--prune", "wanda:0.5", "--calib", C, "--quant", "int4:g32"]),
    ("sparsegpt 50% + int4:g32", ["--prune", "sparsegpt:0.5", "--calib", C, "--quant", "int4:g32"]),
    ("sparsegpt 2:4 + int4 (int4-2:4)", ["--prune", "sparsegpt:2:4", "--calib", C, "--quant", "int4:g64"]),
    ("structured-ffn 30% + int4:g32", ["--prune", "structured-ffn:0.3", "--quant", "int4:g32"]),
]

BEGIN, END = "<!-- prune-report:begin -->", "<!-- prune-report:end -->"


def sparsity_of(report):
    """Removed fraction of the layer projections: zeros after pruning (structured: weights removed) over weights
    before, from the --quant-report JSON."""
    removed = total = 0.0
    for t in report.get("tensors", []):
        if not t["name"].startswith("layers."):
            continue
        p = t.get("pruning")
        if p is None:
            continue
        before = p["shape_before"][0] * p["shape_before"][1]
        after = p["shape_after"][0] * p["shape_after"][1]
        removed += before - after * (1.0 - p["zeros_after"])
        total += before
    return removed / total if total else 0.0


def main():
    args = parse_report_args(__doc__)
    base, _ = eval_command(args)

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in RUNS:
            flags = [f.replace(C, args.calib) for f in flags]
            report_path = os.path.join(tmp, "report.json")
            extra = ["--quant-report", report_path] if "--prune" in flags else []
            p = subprocess.run(base + flags + extra, capture_output=True, text=True)
            if p.returncode != 0:
                reason = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
                print(f"[report] {label}: not available: {reason}", file=sys.stderr)
                rows.append(f"| {label} | – | – | – | – | – | not available: {reason[:80]} |")
                raw.append({"run": label, "flags": flags, "error": reason})
                continue
            r = json.loads(p.stdout)
            r["run"], r["flags"] = label, flags
            if extra:
                with open(report_path) as f:
                    r["pruned_fraction"] = sparsity_of(json.load(f))
            else:
                r["pruned_fraction"] = 0.0
            raw.append(r)
            print(f"[report] {label}: ppl {r['perplexity']:.5f}, KL {r['kl_divergence']:.4e}, "
                  f"top-1 {r['top1_agreement']:.4f}, {int(r['weight_bytes'])} B", file=sys.stderr)
            rows.append(f"| {label} | {100 * r['pruned_fraction']:.1f} % | {int(r['weight_bytes']):,} | "
                        f"{r['perplexity']:.4f} | {r['kl_divergence']:.3f} | {100 * r['top1_agreement']:.2f} % | "
                        f"{r['weights']} |")

    ok = [r for r in raw if "error" not in r]
    tokens = ok[0]["tokens"] if ok else "?"
    cmd = " ".join(shlex.quote(rel(a)) for a in ["scripts/prune_report.py", *sys.argv[1:]])
    lines = [
        f"Text: `{rel(args.text)}`, {tokens} tokens scored (windows of {args.ctx}, stride {args.ctx // 2}); "
        f"reference: the same checkpoint as stored (f32, unpruned); calibration text for wanda, sparsegpt and "
        f"calibrated structured pruning: `{rel(args.calib)}`. KL = mean KL(P_dense ‖ P_pruned) per token, nats. "
        f"Pruned = fraction of the layers' projection weights removed (measured from the report).",
        "",
        "| run | pruned | weight bytes | perplexity | KL | top-1 agreement | weights as stored |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
        generated_line(cmd, ok),
    ]
    return publish("\n".join(lines), raw, args.json, args.update, BEGIN, END)


if __name__ == "__main__":
    sys.exit(main())
