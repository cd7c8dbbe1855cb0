#!/usr/bin/env python3
"""Quality and size of every load-time quantization scheme, from `tessera eval --json` runs.

  scripts/quant_report.py [--tessera build/bin/tessera] [--models DIR] [--text FILE] [--calib FILE]
                          [--threads N] [--max-tokens N] [--update docs/quantization.md] [--json OUT]

For stories260K (default) on the evaluation text, with --reference = the same checkpoint uncompressed, each row is
one `tessera eval` run: weight bytes (linear layers + embeddings as stored), perplexity, mean KL(P_f32 || P_q) per
token and top-1 agreement. Prints a Markdown table; --update replaces the block between
<!-- quant-report:begin --> and <!-- quant-report:end --> in the given file (the table plus the command, machine,
date and commit it came from). A scheme the binary cannot run yet (no --quant, unknown scheme, ...) gets a row
saying so instead of numbers. Standard library only.
"""

import json
import shlex
import subprocess
import sys

from report_util import eval_command, generated_line, parse_report_args, publish, rel  # noqa: E402 (this folder is on sys.path)

# (label, extra flags). {calib} is replaced by the calibration text.
SCHEMES = [
    ("f32 (as stored, baseline)", []),
    ("bf16", ["--quant", "bf16"]),
    ("bf16, --act-dtype fp32", ["--quant", "bf16", "--act-dtype", "fp32"]),
    ("f16", ["--quant", "f16"]),
    ("int8", ["--quant", "int8"]),
    ("int8, --act-quant int8", ["--quant", "int8", "--act-quant", "int8"]),
    ("int4:g32", ["--quant", "int4:g32"]),
    ("int4:g64", ["--quant", "int4:g64"]),
    ("int4:g128", ["--quant", "int4:g128"]),
    ("int4:g32:asym", ["--quant", "int4:g32:asym"]),
    ("int4:g64:asym", ["--quant", "int4:g64:asym"]),
    ("int4:g128:asym", ["--quant", "int4:g128:asym"]),
    ("nf4:g32", ["--quant", "nf4:g32"]),
    ("nf4:g64", ["--quant", "nf4:g64"]),
    ("nf4:g128", ["--quant", "nf4:g128"]),
    ("int4:g32, activation-aware", ["--quant", "int4:g32", "--calib", "{calib}"]),
    ("int4:g128, activation-aware", ["--quant", "int4:g128", "--calib", "{calib}"]),
    ("int4:g32 + lm_head=int8 (mixed)", ["--quant", "int4:g32", "--quant-rule", "lm_head=int8"]),
]

BEGIN, END = "<!-- quant-report:begin -->", "<!-- quant-report:end -->"


def main():
    args = parse_report_args(__doc__)
    base, _ = eval_command(args)

    rows, raw = [], []
    for label, flags in SCHEMES:
        flags = [f.replace("{calib}", args.calib) for f in flags]
        p = subprocess.run(base + flags, capture_output=True, text=True)
        if p.returncode != 0:
            reason = (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[0]
            print(f"[report] {label}: not available: {reason}", file=sys.stderr)
            rows.append(f"| {label} | – | – | – | – | not available: {reason[:80]} |")
            raw.append({"scheme": label, "flags": flags, "error": reason})
            continue
        r = json.loads(p.stdout)
        r["scheme"], r["flags"] = label, flags
        raw.append(r)
        print(f"[report] {label}: ppl {r['perplexity']:.5f}, KL {r['kl_divergence']:.4e}, "
              f"top-1 {r['top1_agreement']:.4f}, {int(r['weight_bytes'])} B", file=sys.stderr)
        rows.append(f"| {label} | {int(r['weight_bytes']):,} | {r['perplexity']:.4f} | {r['kl_divergence']:.2e} | "
                    f"{100 * r['top1_agreement']:.2f} % | {r['weights']} |")

    ok = [r for r in raw if "error" not in r]
    tokens = ok[0]["tokens"] if ok else "?"
    cmd = " ".join(shlex.quote(rel(a)) for a in ["scripts/quant_report.py", *sys.argv[1:]])
    lines = [
        f"Text: `{rel(args.text)}`, {tokens} tokens scored (windows of {args.ctx}, stride {args.ctx // 2}); "
        f"reference: the same checkpoint as stored (f32). KL = mean KL(P_f32 ‖ P_scheme) per token, nats.",
        "",
        "| scheme | weight bytes | perplexity | KL | top-1 agreement | weights as stored |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
        generated_line(cmd, ok),
    ]
    return publish("\n".join(lines), raw, args.json, args.update, BEGIN, END)


if __name__ == "__main__":
    sys.exit(main())
