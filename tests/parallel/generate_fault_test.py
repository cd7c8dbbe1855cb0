#!/usr/bin/env python3
"""A rank of `tessera generate --tp 2` dies or hangs mid-generation: the whole job must end, non-zero, within the
communication timeout, naming what failed — never a silent hang.

    generate_fault_test.py TESSERA_BIN MPIEXEC CASE     CASE: kill | stop | kill-no-teardown

kill               SIGKILL rank 1; Open MPI's launcher tears the job down.
stop               SIGSTOP rank 1 (alive but stuck); rank 0's collective times out and aborts the job.
kill-no-teardown   SIGKILL rank 1 with the launcher's tear-down switched off: only our timeout can end the job.
"""
import os
import signal
import subprocess
import sys
import time

TIMEOUT_S = 5
SLACK_S = 10  # mpiexec start-up and tear-down on a loaded 2-core machine


def rank_pid(marker, rank):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(cmd[0]) == b"tessera" and marker.encode() in cmd and \
                f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(pid)
    return None


def main():
    tessera, mpiexec, case = sys.argv[1], sys.argv[2], sys.argv[3]
    marker = f"1,{3 + os.getpid() % 30000}"  # the prompt ids: find this job's processes by them
    cmd = [mpiexec, "--oversubscribe", "--allow-run-as-root", "-np", "2"]
    if case == "kill-no-teardown":
        cmd += ["--mca", "orte_abort_on_non_zero_status", "0"]
    cmd += [tessera, "generate", "--dummy-weights", "--preset", "llama-110m", "--prompt-ids", marker, "-n", "100000", "--ignore-eos", "--threads", "1", "--tp", "2", "--comm-timeout", str(TIMEOUT_S)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.time() + 60
    while victim is None and time.time() < deadline and proc.poll() is None:
        victim = rank_pid(marker, 1)
        time.sleep(0.2)
    if victim is None:
        proc.kill()
        print("FAIL: rank 1 never started:\n" + proc.communicate()[1])
        return 1
    time.sleep(4)  # load (~1 s) and be well into decoding
    if proc.poll() is not None:
        print("FAIL: the job ended before the fault:\n" + proc.communicate()[1])
        return 1
    os.kill(victim, signal.SIGSTOP if case == "stop" else signal.SIGKILL)
    t0 = time.time()
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S + SLACK_S + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        if case == "stop":
            os.kill(victim, signal.SIGKILL)
        print("FAIL: the job hung after the fault")
        return 1
    waited = time.time() - t0
    print(f"{case}: exit status {proc.returncode}, job ended {waited:.2f} s after the fault")
    print(err[-2000:])
    ok = proc.returncode != 0 and waited < TIMEOUT_S + SLACK_S
    if case == "stop":
        # Only our timeout can notice a stuck rank; the message names the rank and the operation.
        ok = ok and "tessera: rank 0:" in err and f"timed out after {TIMEOUT_S} s" in err
    if case == "kill-no-teardown":
        ok = ok and "tessera: rank 0:" in err
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
