#!/usr/bin/env python3
"""Runs one mpiexec command line and checks how the job ended.

    run_mpi_case.py --expect fail --max-seconds 10 --output 'all_reduce_sum on mpi:world timed out' -- mpiexec ...

--expect pass|fail    exit status 0, or non-zero
--output REGEX        must match stdout+stderr (repeatable)
--max-seconds S       the job must end within S seconds of rank 0 entering the operation ("enters <op> at <t>"),
                      or of the start when rank 0 prints no such line (killed at S + 30: a hang fails too)
--min-seconds S       ...and not before S (e.g. to show a timeout, not the launcher, ended the job)

Prints the exit status, the wall time and, when rank 0 printed "enters <op> at <t>", the time from then until
the job ended (the failure-detection latency).
"""
import argparse
import re
import subprocess
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect", choices=["pass", "fail"], required=True)
    ap.add_argument("--output", action="append", default=[])
    ap.add_argument("--max-seconds", type=float, required=True)
    ap.add_argument("--min-seconds", type=float, default=0.0)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command")

    start = time.time()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                              timeout=args.max_seconds + 30)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    end = time.time()
    wall = end - start
    text = out + err

    report = f"exit status {rc}, wall {wall:.2f} s"
    m = re.search(r"enters (\S+) at ([0-9.]+)", text)
    if m:
        report += f", job ended {end - float(m.group(2)):.2f} s after rank 0 entered {m.group(1)}"
    print(report)

    problems = []
    if rc is None:
        problems.append(f"hung: killed after {args.max_seconds + 30:.0f} s")
    elif args.expect == "pass" and rc != 0:
        problems.append(f"expected exit status 0, got {rc}")
    elif args.expect == "fail" and rc == 0:
        problems.append("expected a non-zero exit status, got 0")
    # What is judged is how long the job took to end once the fault was met: from rank 0's "enters <op>" line
    # when it printed one (start-up time on a loaded machine is not the communicator's doing), else the wall time.
    judged, what = (end - float(m.group(2)), f"after rank 0 entered {m.group(1)}") if m else (wall, "in all")
    if judged > args.max_seconds:
        problems.append(f"ended {judged:.2f} s {what}, more than {args.max_seconds} s")
    if judged < args.min_seconds:
        problems.append(f"ended {judged:.2f} s {what}, less than {args.min_seconds} s")
    for pattern in args.output:
        if not re.search(pattern, text):
            problems.append(f"output does not match {pattern!r}")
    if problems:
        print("command: " + " ".join(cmd))
        print("---- stdout ----\n" + out + "---- stderr ----\n" + err)
        for p in problems:
            print("FAIL: " + p)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
