#!/usr/bin/env python3
"""Two "hosts" in one machine: two network namespaces joined by a veth pair, each with its own address, and Open
MPI launching one rank in each over TCP through an rsh agent that enters the namespace (as ssh would enter
another machine). `tessera generate --tp 2` across them must print exactly what one process prints.

    multihost_netns_test.py TESSERA_BIN MODELS_DIR [MPIEXEC]

Needs root and network namespaces (ip netns); exits 77 (skipped) with the reason when they are not available,
or when stories260K is absent.
"""
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: multihost_netns_test.py TESSERA_BIN MODELS_DIR [MPIEXEC]")
    tessera, models = os.path.abspath(sys.argv[1]), sys.argv[2]
    mpiexec = sys.argv[3] if len(sys.argv) > 3 else "mpiexec"
    model = os.path.join(models, "stories260K", "stories260K.bin")
    tok = os.path.join(models, "stories260K", "tok512.model")
    if not os.path.exists(model):
        print(f"SKIP: {model} not found (set TESSERA_MODELS)")
        return SKIP
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("SKIP: needs root and iproute2 (ip netns) to build two network namespaces")
        return SKIP

    tag = str(os.getpid() % 100000)
    ns = [f"tsr{tag}a", f"tsr{tag}b"]
    dev = [f"tv{tag}a", f"tv{tag}b"]
    subnet = 100 + os.getpid() % 100
    addr = [f"10.{subnet}.7.1", f"10.{subnet}.7.2"]
    created = []
    tmp = tempfile.mkdtemp(prefix="tessera-netns-")
    try:
        try:
            for n in ns:
                run(["ip", "netns", "add", n])
                created.append(n)
            run(["ip", "link", "add", dev[0], "type", "veth", "peer", "name", dev[1]])
        except subprocess.CalledProcessError as e:
            print(f"SKIP: cannot create network namespaces here: {e.stderr.strip()}")
            return SKIP
        for i in range(2):
            run(["ip", "link", "set", dev[i], "netns", ns[i]])
            run(["ip", "-n", ns[i], "addr", "add", f"{addr[i]}/24", "dev", dev[i]])
            run(["ip", "-n", ns[i], "link", "set", dev[i], "up"])
            run(["ip", "-n", ns[i], "link", "set", "lo", "up"])
        # The "remote shell": Open MPI calls it as `agent [ssh options] HOST COMMAND...`.
        agent = os.path.join(tmp, "netns-rsh")
        with open(agent, "w") as f:
            f.write("#!/bin/sh\n"
                    "while [ \"${1#-}\" != \"$1\" ]; do shift; done\n"
                    "host=$1; shift\n"
                    f"case $host in {addr[0]}) ns={ns[0]} ;; {addr[1]}) ns={ns[1]} ;; "
                    "*) echo \"netns-rsh: unknown host $host\" >&2; exit 1 ;; esac\n"
                    "exec ip netns exec $ns sh -c \"$*\"\n")
        os.chmod(agent, 0o755)

        launch = ["ip", "netns", "exec", ns[0], mpiexec, "--allow-run-as-root", "-np", "2", "-H",
                  f"{addr[0]}:1,{addr[1]}:1", "--mca", "plm_rsh_agent", agent, "--mca", "btl", "tcp,self",
                  "--mca", "btl_tcp_if_include", f"10.{subnet}.7.0/24", "--mca", "oob_tcp_if_include",
                  f"10.{subnet}.7.0/24", "--map-by", "node"]
        # Each rank sees only its own namespace's address: the ranks really are on two "hosts".
        seen = run(launch + ["ip", "-o", "-4", "addr", "show", "scope", "global"], timeout=120).stdout
        if not (addr[0] in seen and addr[1] in seen and seen.count("inet ") == 2):
            print(f"FAIL: the ranks did not land one per namespace:\n{seen}")
            return 1
        gen = ["generate", "--model", model, "--tokenizer", tok, "-p", "Once upon a time", "-n", "64",
               "--temperature", "0", "--threads", "1"]
        want = run([tessera] + gen).stdout
        cmd = launch + [tessera] + gen + ["--tp", "2", "--comm-timeout", "30"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        print(" ".join(cmd))
        print(proc.stderr[-3000:])
        if proc.returncode != 0:
            print(f"FAIL: mpiexec exited with {proc.returncode}")
            return 1
        if proc.stdout != want:
            print(f"FAIL: output differs from one process\n--- one process:\n{want}\n--- two namespaces:\n{proc.stdout}")
            return 1
        if "2 ranks (tp 2 x pp 1)" not in proc.stderr:
            print("FAIL: the run did not report 2 ranks")
            return 1
        print("OK: two ranks in two network namespaces print what one process prints")
        return 0
    finally:
        for n in created:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
