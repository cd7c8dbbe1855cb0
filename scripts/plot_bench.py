#!/usr/bin/env python3
"""Charts of a `tessera bench` sweep (its --csv or --json report) as PNG files.

    .venv/bin/python scripts/plot_bench.py RESULTS.csv|RESULTS.json [--out-dir DIR] [--prefix NAME]

Writes, for each prompt length x generation length x threads per rank in the report:
  NAME_throughput[_SUFFIX].png  decode and prefill tokens/s, and the per-token decode latency (p50, p90-p99 band),
                                against the batch, one line per parallel layout (tp x pp)
  NAME_scaling[_SUFFIX].png     scaling efficiency against the number of ranks: tokens/s / (ranks x tokens/s of
                                the 1-rank layout at the same batch), decode and prefill, one colour per batch,
                                one line style per kind of layout (tensor, pipeline, both); 1.0 is perfect scaling
(SUFFIX names the prompt/generation lengths and threads when the report has several.) Titles name the model,
weights, machine and date from the report. Prints the paths it wrote.
"""
import argparse
import csv
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

INT_FIELDS = ("tp", "pp", "ranks", "threads_per_rank", "batch", "micro_batches", "prompt_len", "gen_len",
              "prefill_tokens", "decode_tokens")
FLOAT_FIELDS = ("prefill_tokens_per_s", "decode_tokens_per_s", "latency_ms_p50", "latency_ms_p90",
                "latency_ms_p99", "comm_share_decode", "comm_share_prefill", "peak_rss_bytes_max")


def load_rows(path):
    """The report's rows as dicts with numeric fields converted (CSV and JSON give the same)."""
    if path.endswith(".json"):
        with open(path) as f:
            doc = json.load(f)
        rows = doc["results"] if isinstance(doc, dict) else doc
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"plot_bench: {path} has no results")
    out = []
    for r in rows:
        r = dict(r)
        try:
            for k in INT_FIELDS:
                r[k] = int(r[k])
            for k in FLOAT_FIELDS:
                r[k] = float(r[k])
        except (KeyError, ValueError) as e:
            sys.exit(f"plot_bench: {path} is not a tessera bench sweep report (field {e})")
        out.append(r)
    return out


def layout_label(tp, pp):
    return f"tp {tp} x pp {pp} ({tp * pp} rank{'s' if tp * pp > 1 else ''})"


def title(rows, what):
    r = rows[0]
    model = f"{r.get('model', '?')} ({r.get('weights', '?')}"
    if r.get("quant") not in (None, "", "none"):
        model += f", --quant {r['quant']}"
    model += ")"
    return f"{what}: {model}\n{r.get('machine', 'unknown machine')} | {r.get('date', 'unknown date')}"


def plot_throughput(rows, path, detail):
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    layouts = sorted({(r["tp"], r["pp"]) for r in rows}, key=lambda l: (l[0] * l[1], l[1], l[0]))
    for tp, pp in layouts:
        rs = sorted((r for r in rows if (r["tp"], r["pp"]) == (tp, pp)), key=lambda r: r["batch"])
        b = [r["batch"] for r in rs]
        label = layout_label(tp, pp)
        axes[0].plot(b, [r["decode_tokens_per_s"] for r in rs], marker="o", label=label)
        axes[1].plot(b, [r["prefill_tokens_per_s"] for r in rs], marker="o", label=label)
        line, = axes[2].plot(b, [r["latency_ms_p50"] for r in rs], marker="o", label=label)
        axes[2].fill_between(b, [r["latency_ms_p90"] for r in rs], [r["latency_ms_p99"] for r in rs],
                             color=line.get_color(), alpha=0.15)
    for ax, ylabel, name in ((axes[0], "decode tokens/s (all sequences)", "Decode throughput"),
                             (axes[1], "prefill tokens/s", "Prefill throughput"),
                             (axes[2], "ms per token of a sequence (p50; band p90-p99)", "Decode latency")):
        ax.set_xscale("log", base=2)
        batches = sorted({r["batch"] for r in rows})
        ax.set_xticks(batches)
        ax.set_xticklabels([str(b) for b in batches])
        ax.set_xlabel("batch (sequences decoded together)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title(rows, "tessera bench " + detail), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def layout_kind(tp, pp):
    if tp > 1 and pp > 1:
        return "tensor x pipeline"
    return "pipeline" if pp > 1 else "tensor"


KIND_STYLE = {"tensor": "-", "pipeline": "--", "tensor x pipeline": ":"}
KIND_MARKER = {"tensor": "o", "pipeline": "s", "tensor x pipeline": "^"}


def plot_scaling(rows, path, detail):
    """Efficiency per batch and layout against the 1-rank layout; False when the report has no 1-rank rows."""
    base = {r["batch"]: r for r in rows if r["ranks"] == 1}
    if not base or not any(r["ranks"] > 1 for r in rows):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    batches = sorted(base)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    max_ranks = max(r["ranks"] for r in rows)
    for ax, key, name in ((axes[0], "decode_tokens_per_s", "Decode"), (axes[1], "prefill_tokens_per_s", "Prefill")):
        for i, b in enumerate(batches):
            colour = colours[i % len(colours)]
            ref = base[b][key]
            for kind in KIND_STYLE:
                pts = sorted((r["ranks"], r[key] / (r["ranks"] * ref)) for r in rows
                             if r["batch"] == b and r["ranks"] > 1 and layout_kind(r["tp"], r["pp"]) == kind)
                if not pts:
                    continue
                pts = [(1, 1.0)] + pts
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, linestyle=KIND_STYLE[kind],
                        marker=KIND_MARKER[kind])
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ranks = sorted({r["ranks"] for r in rows})
        ax.set_xticks(ranks)
        ax.set_xlim(0.8, max_ranks + 0.2)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("ranks (tp x pp)")
        ax.set_ylabel("tokens/s / (ranks x tokens/s of 1 rank)")
        ax.set_title(f"{name} scaling efficiency")
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=colours[i % len(colours)], label=f"batch {b}") for i, b in enumerate(batches)]
    kinds = {layout_kind(r["tp"], r["pp"]) for r in rows if r["ranks"] > 1}
    handles += [Line2D([], [], color="black", linestyle=KIND_STYLE[k], marker=KIND_MARKER[k], label=f"{k} parallel")
                for k in KIND_STYLE if k in kinds]
    axes[0].legend(handles=handles, fontsize=8)
    fig.suptitle(title(rows, "tessera bench " + detail), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", help="CSV or JSON written by tessera bench --csv/--json")
    ap.add_argument("--out-dir", help="where to write the PNGs (default: beside the report)")
    ap.add_argument("--prefix", default="bench", help="file name prefix (default: bench)")
    args = ap.parse_args()
    rows = load_rows(args.report)
    for r in rows:
        for k in ("decode_tokens_per_s", "prefill_tokens_per_s"):
            if not (math.isfinite(r[k]) and r[k] > 0):
                sys.exit(f"plot_bench: a row has {k} = {r[k]}: not a usable measurement")
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.report))
    os.makedirs(out_dir, exist_ok=True)

    groups = sorted({(r["prompt_len"], r["gen_len"], r["threads_per_rank"]) for r in rows})
    written = []
    for prompt_len, gen_len, threads in groups:
        sel = [r for r in rows
               if (r["prompt_len"], r["gen_len"], r["threads_per_rank"]) == (prompt_len, gen_len, threads)]
        detail = f"(prompt {prompt_len}, {gen_len} decoded tokens per sequence, {threads} thread(s) per rank)"
        suffix = f"_p{prompt_len}_g{gen_len}_t{threads}" if len(groups) > 1 else ""
        path = os.path.join(out_dir, f"{args.prefix}_throughput{suffix}.png")
        plot_throughput(sel, path, detail)
        written.append(path)
        path = os.path.join(out_dir, f"{args.prefix}_scaling{suffix}.png")
        if plot_scaling(sel, path, detail):
            written.append(path)
        else:
            print(f"plot_bench: no scaling chart for {detail}: the report needs the 1-rank layout and at least one "
                  "layout of several ranks", file=sys.stderr)
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
