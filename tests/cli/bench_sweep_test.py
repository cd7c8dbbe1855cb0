#!/usr/bin/env python3
"""`tessera bench` sweeps: a tiny sweep over tp 1,2 x batch 1,2 (the tp 2 layout as its own mpiexec job) writes
CSV and JSON with exactly those combinations and sane numbers; scripts/plot_bench.py charts them; inside mpirun a
single pipeline layout runs directly; a failing layout job, a missing mpiexec and several layouts under mpirun
end with a non-zero status and a message saying why. No timing thresholds: only relations that hold on any
machine.

    bench_sweep_test.py TESSERA_BIN MPIEXEC
"""
import csv
import json
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PLOT = os.path.join(HERE, "..", "..", "scripts", "plot_bench.py")
PRESET = "llama-110m"  # the smallest preset: 12 heads, so tp 2 divides them and tp 5 does not
PROMPT, GEN = 8, 4
failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"\n     {detail}"))
    if not cond:
        failures.append(name)


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def mpiexec_flags(mpiexec):
    """Open MPI needs these to start more ranks than cores and to run as root; other MPIs refuse them."""
    v = subprocess.run([mpiexec, "--version"], capture_output=True, text=True)
    if "Open MPI" not in v.stdout + v.stderr and "OpenRTE" not in v.stdout + v.stderr:
        return []
    return ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])


def csv_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k in ("comm_share_per_rank", "peak_rss_bytes_per_rank"):
                r[k] = [float(x) for x in v.split(";")] if v else []
            else:
                try:
                    r[k] = float(v) if any(c in v for c in ".eE") else int(v)
                except ValueError:
                    pass
    return rows


def check_rows(where, rows, want_keys):
    keys = sorted((r["tp"], r["pp"], r["batch"], r["prompt_len"], r["gen_len"]) for r in rows)
    check(f"{where}: exactly the combinations asked for", keys == sorted(want_keys), f"{keys} != {sorted(want_keys)}")
    for r in rows:
        tag = f"{where} tp {r['tp']} pp {r['pp']} batch {r['batch']}"
        nums = ["prefill_seconds", "prefill_tokens_per_s", "decode_seconds", "decode_tokens_per_s",
                "decode_ms_per_step", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "peak_rss_bytes_max",
                "load_seconds"]
        bad = [k for k in nums if not positive(r[k])]
        check(f"{tag}: positive finite figures", not bad, f"not positive/finite: {[(k, r[k]) for k in bad]}")
        check(f"{tag}: tokens counted = batch x lengths",
              r["decode_tokens"] == r["batch"] * r["gen_len"] and r["prefill_tokens"] == r["batch"] * r["prompt_len"],
              f"decode {r['decode_tokens']}, prefill {r['prefill_tokens']}")
        check(f"{tag}: tokens/s = tokens / seconds",
              math.isclose(r["decode_tokens_per_s"], r["decode_tokens"] / r["decode_seconds"], rel_tol=1e-6) and
              math.isclose(r["prefill_tokens_per_s"], r["prefill_tokens"] / r["prefill_seconds"], rel_tol=1e-6))
        check(f"{tag}: latency p50 <= p90 <= p99", r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"])
        # Every micro-batch's G inter-token times add up to at most the decode time.
        check(f"{tag}: p50 latency within the decode time", r["latency_ms_p50"] <= 1e3 * r["decode_seconds"])
        check(f"{tag}: ranks = tp x pp, one peak RSS per rank",
              r["ranks"] == r["tp"] * r["pp"] and len(r["peak_rss_bytes_per_rank"]) == r["ranks"] and
              all(positive(x) for x in r["peak_rss_bytes_per_rank"]) and
              max(r["peak_rss_bytes_per_rank"]) == r["peak_rss_bytes_max"], str(r["peak_rss_bytes_per_rank"]))
        shares = [r["comm_share_decode"], r["comm_share_prefill"]] + list(r["comm_share_per_rank"])
        if r["ranks"] == 1:
            check(f"{tag}: no communication in one process", all(s == 0 for s in shares), str(shares))
        else:
            check(f"{tag}: communication share in (0, 1)", all(0 < s < 1 for s in shares), str(shares))
        check(f"{tag}: machine, date, command, revision recorded",
              r["machine"] and r["date"] and "bench" in r["command"] and "git_revision" in r)


def main():
    tessera, mpiexec = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as d:
        out_csv, out_json = os.path.join(d, "sweep.csv"), os.path.join(d, "sweep.json")
        base = [tessera, "bench", "--preset", PRESET, "--prompt-len", str(PROMPT), "--gen-len", str(GEN),
                "--mpiexec", mpiexec]
        r = subprocess.run(base + ["--tp", "1,2", "--batch", "1,2", "--csv", out_csv, "--json", out_json],
                           capture_output=True, text=True, timeout=400)
        check("sweep tp 1,2 x batch 1,2 exits 0", r.returncode == 0, r.stdout + r.stderr[-3000:])
        if r.returncode != 0:
            return 1
        check("the tp 2 layout ran as an mpiexec job of 2 ranks", f"{mpiexec} -n 2 " in r.stderr, r.stderr[-2000:])
        lines = [line for line in r.stdout.splitlines() if line.startswith("dummy:")]
        check("one human line per combination on stdout", len(lines) == 4, r.stdout)
        want = [(tp, 1, b, PROMPT, GEN) for tp in (1, 2) for b in (1, 2)]
        crows = csv_rows(out_csv)
        with open(out_json) as f:
            doc = json.load(f)
        jrows = doc["results"]
        check("JSON names machine, date and command",
              doc["machine"] and doc["date"] and "--tp 1,2" in doc["command"])
        check_rows("CSV", crows, want)
        check_rows("JSON", jrows, want)
        same = all(math.isclose(c["decode_tokens_per_s"], j["decode_tokens_per_s"], rel_tol=1e-9)
                   for c, j in zip(crows, jrows))
        check("CSV and JSON hold the same measurements, in the same order", same)
        b2 = {(r["tp"], r["batch"]): r for r in jrows}
        check("without a pipeline a batch is one micro-batch", all(r["micro_batches"] == 1 for r in jrows))
        check("tp 2: each rank holds half the layers' weights, so less memory than one process",
              b2[(2, 2)]["peak_rss_bytes_max"] < b2[(1, 2)]["peak_rss_bytes_max"],
              f"{b2[(2, 2)]['peak_rss_bytes_max']} vs {b2[(1, 2)]['peak_rss_bytes_max']}")

        # Charts from either format.
        for report in (out_csv, out_json):
            out_dir = os.path.join(d, "png-" + os.path.basename(report))
            p = subprocess.run([sys.executable, PLOT, report, "--out-dir", out_dir], capture_output=True, text=True,
                               timeout=300)
            pngs = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
            check(f"plot_bench.py {os.path.basename(report)} writes the two charts",
                  p.returncode == 0 and pngs == ["bench_scaling.png", "bench_throughput.png"], p.stdout + p.stderr)
            for png in pngs:
                with open(os.path.join(out_dir, png), "rb") as f:
                    data = f.read()
                check(f"{png} is a non-empty PNG", len(data) > 10000 and data[:8] == b"\x89PNG\r\n\x1a\n", len(data))

        # Inside mpirun, one pipeline layout runs directly: 2 sequences in 2 micro-batches, the leader waits.
        one = os.path.join(d, "pp2.json")
        r = subprocess.run([mpiexec, "-n", "2"] + mpiexec_flags(mpiexec) + base[:-2] +
                           ["--pp", "2", "--batch", "2", "--json", one], capture_output=True, text=True, timeout=300)
        check("mpiexec -n 2 bench --pp 2 exits 0", r.returncode == 0, r.stdout + r.stderr[-3000:])
        if r.returncode == 0:
            with open(one) as f:
                rows = json.load(f)["results"]
            check_rows("pp 2 under mpirun", rows, [(1, 2, 2, PROMPT, GEN)])
            check("pp 2 splits batch 2 into 2 micro-batches", rows[0]["micro_batches"] == 2, str(rows[0]))

        # Several layouts under mpirun are refused.
        r = subprocess.run([mpiexec, "-n", "1"] + mpiexec_flags(mpiexec) + base[:-2] + ["--tp", "1,2", "--batch", "1"],
                           capture_output=True, text=True, timeout=120)
        check("several layouts under mpirun are refused",
              r.returncode != 0 and "under mpirun give one --tp and one --pp" in r.stderr, r.stderr[-2000:])

        # A layout the model cannot take: its job fails, the sweep says so, and the rows before it are kept.
        partial = os.path.join(d, "partial.csv")
        r = subprocess.run(base + ["--tp", "1,5", "--batch", "1", "--csv", partial], capture_output=True, text=True,
                           timeout=300)
        check("a failing layout job ends the sweep with a non-zero status", r.returncode != 0, r.stderr[-2000:])
        check("the job's own error is shown", "--tp 5 does not divide the model's 12 attention heads" in r.stderr,
              r.stderr[-2000:])
        check("the sweep names the failed layout", "the tp 5 x pp 1 job failed" in r.stderr, r.stderr[-2000:])
        kept = csv_rows(partial) if os.path.exists(partial) else []
        check("rows measured before the failure are written", [(x["tp"], x["batch"]) for x in kept] == [(1, 1)],
              str(kept))

        # No launcher: refused before anything runs.
        r = subprocess.run(base[:-1] + ["/nonexistent/mpiexec", "--tp", "1,2", "--batch", "1"], capture_output=True,
                           text=True, timeout=120)
        check("a missing mpiexec is refused up front, naming --mpiexec",
              r.returncode != 0 and "--mpiexec" in r.stderr and "tokens/s" not in r.stdout, r.stdout + r.stderr)
    print(f"{len(failures)} failure(s)" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
