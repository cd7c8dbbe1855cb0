"""Starts a real `tessera serve` process on a free port for the end-to-end server tests."""
import os
import signal
import subprocess
import sys
import tempfile
import time

import requests


def models_dir(default):
    return os.environ.get("TESSERA_MODELS", default)


def skip(message):
    print("SKIP: " + message)
    sys.exit(77)


class Server:
    def __init__(self, tessera, args, api_key=None, launcher=(), threads=2):
        self.tmp = tempfile.TemporaryDirectory()
        self.port_file = os.path.join(self.tmp.name, "port")
        self.log_path = os.path.join(self.tmp.name, "serve.log")
        self.log = open(self.log_path, "w")
        # launcher: e.g. ["mpiexec", "-np", "2"] to serve from rank 0 of a parallel job.
        cmd = list(launcher) + [tessera, "serve", "--port", "0", "--port-file", self.port_file,
                                "--threads", str(threads)] + args
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not os.path.exists(self.port_file) or not open(self.port_file).read().strip():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start:\n" + self.log_text())
            time.sleep(0.02)
        self.port = int(open(self.port_file).read())
        self.url = "http://127.0.0.1:%d" % self.port
        self.headers = {"Authorization": "Bearer " + api_key} if api_key else {}

    def log_text(self):
        self.log.flush()
        return open(self.log_path).read()

    def wait_ready(self):
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.log_text())
            r = requests.get(self.url + "/health", timeout=10)
            # The ready line is printed before the server is marked ready, so a 200 must come after it (read the
            # log after the request: the server may become ready in between).
            assert r.status_code in (200, 503), r.status_code
            if r.status_code == 200:
                assert "ready on" in self.log_text(), "health 200 before the model was loaded"
            if r.status_code == 200:
                return
            time.sleep(0.05)
        raise RuntimeError("server never became ready:\n" + self.log_text())

    def metric(self, name):
        """Value of a metric line such as 'tessera_kv_blocks_used' or 'tessera_requests_total{status="200"}'."""
        for line in requests.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.split(" ")[0] == name:
                return float(line.split(" ")[-1])
        return None

    def stop(self, sig=signal.SIGTERM, timeout=120):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("server did not exit after signal %d:\n%s" % (sig, self.log_text()))
        return self.proc.returncode
