"""End-to-end tests of `tessera serve` with no model (the random-weight llama-110m preset, slow enough to act on
requests mid-generation): the no-model banner, /health during loading, API key, a client that disconnects
mid-stream (its request is cancelled and its KV blocks freed, as /metrics shows; with a prompt list, every
prompt's request), 429 when the queue is full, and SIGTERM draining the request in flight.

usage: test_server_dummy.py TESSERA
"""
import json
import os
import signal
import sys
import threading
import time

import requests

sys.path.insert(0, os.path.dirname(__file__))
from serve_fixture import Server  # noqa: E402

TESSERA = sys.argv[1]
KEY = "test-key-123"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL: " + what)


def wait_for(pred, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    check(False, "timed out waiting for " + what)
    return False


def read_events(response, count):
    """Reads `count` SSE data lines of a streamed response; returns the line iterator, which the caller keeps (a
    dropped generator can close the connection)."""
    lines = response.iter_lines()
    got = 0
    for line in lines:
        if line.startswith(b"data:"):
            got += 1
            if got == count:
                break
    return lines


srv = Server(TESSERA, ["--max-num-seqs", "1", "--max-queue", "1", "--kv-memory", "256MiB"], api_key=KEY)
try:
    srv.wait_ready()
    url, auth = srv.url, srv.headers
    check("RANDOM WEIGHTS" in srv.log_text(), "banner says the weights are random")
    models = requests.get(url + "/v1/models", headers=auth).json()
    check(models["data"][0]["id"] == "dummy:llama-110m", "model id of the preset")

    # API key: missing, wrong, right; /health and /metrics stay open.
    body = {"prompt": [1, 450, 4996], "max_tokens": 2, "temperature": 0}
    check(requests.post(url + "/v1/completions", json=body).status_code == 401, "missing key -> 401")
    check(requests.post(url + "/v1/completions", json=body,
                        headers={"Authorization": "Bearer wrong"}).status_code == 401, "wrong key -> 401")
    check(requests.get(url + "/v1/models").status_code == 401, "models needs the key")
    ok = requests.post(url + "/v1/completions", json=body, headers=auth)
    check(ok.status_code == 200 and len(ok.json()["choices"][0]["text"].split()) == 2, "right key -> 200, ids text")
    check(requests.get(url + "/health").status_code == 200, "health without key")
    check(requests.get(url + "/metrics").status_code == 200, "metrics without key")
    # Text prompts on the id tokenizer work too (bytes become ids), so chat runs.
    chat = requests.post(url + "/v1/chat/completions", headers=auth,
                         json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0})
    check(chat.status_code == 200, "chat on the dummy model")

    # Disconnect mid-stream: the request is cancelled and its blocks freed.
    cancelled0 = srv.metric("tessera_requests_cancelled_total")
    r = requests.post(url + "/v1/completions", headers=auth, stream=True,
                      json={"prompt": [1, 450, 4996], "max_tokens": 900, "temperature": 0, "stream": True})
    lines = read_events(r, 2)
    check(srv.metric("tessera_kv_blocks_used") > 0, "the streaming request holds blocks")
    r.close()  # the client goes away
    wait_for(lambda: srv.metric("tessera_requests_cancelled_total") == cancelled0 + 1, "the cancellation")
    wait_for(lambda: srv.metric("tessera_kv_blocks_used") == 0, "blocks freed after the disconnect")
    check(srv.metric("tessera_num_requests_running") == 0, "nothing running after the disconnect")

    # Queue full: one running (max-num-seqs 1), one waiting (max-queue 1), the next gets 429 + Retry-After.
    long_body = {"prompt": [1, 450, 4996], "max_tokens": 900, "temperature": 0, "stream": True}
    running = requests.post(url + "/v1/completions", headers=auth, json=long_body, stream=True)
    it = running.iter_lines()
    next(l for l in it if l.startswith(b"data:"))  # it is running
    waiting_result = {}

    def waiting_client():
        waiting_result["r"] = requests.post(url + "/v1/completions", headers=auth,
                                            json={"prompt": [1, 450], "max_tokens": 2, "temperature": 0})

    t = threading.Thread(target=waiting_client)
    t.start()
    wait_for(lambda: srv.metric("tessera_num_requests_waiting") == 1, "a queued request")
    full = requests.post(url + "/v1/completions", headers=auth, json=body)
    check(full.status_code == 429 and full.headers.get("Retry-After") == "1", "queue full -> 429 + Retry-After")
    check("error" in full.json(), "429 has an error body")
    running.close()  # cancel the long one; the queued one then runs and completes
    t.join(300)
    check(waiting_result.get("r") is not None and waiting_result["r"].status_code == 200, "queued request completed")
    check(srv.metric('tessera_requests_total{status="429"}') == 1, "429 counted")

    # SIGTERM drains: a request in flight completes, new connections are refused, the process exits 0.
    drain = {}

    def drained_client():
        resp = requests.post(url + "/v1/completions", headers=auth, stream=True,
                             json={"prompt": [1, 450, 4996], "max_tokens": 64, "temperature": 0, "stream": True})
        events = [l[5:].strip() for l in resp.iter_lines() if l.startswith(b"data:")]
        drain["events"] = events

    wait_for(lambda: srv.metric("tessera_kv_blocks_used") == 0, "an idle engine")
    t = threading.Thread(target=drained_client)
    t.start()
    # 64 tokens take long enough (about 10 ms each) that the poll sees the request running before it ends.
    wait_for(lambda: srv.metric("tessera_num_requests_running") == 1, "the request to drain")
    srv.proc.send_signal(signal.SIGTERM)
    t.join(300)
    rc = srv.proc.wait(300)
    check(rc == 0, "exit code 0 after SIGTERM (got %s)" % rc)
    ev = drain.get("events", [])
    check(len(ev) >= 2 and ev[-1] == b"[DONE]", "the in-flight request finished during the drain")
    if len(ev) >= 2:
        last = json.loads(ev[-2])
        check(last["choices"][0]["finish_reason"] == "length", "drained request ran to its max_tokens")
    check("draining" in srv.log_text(), "drain logged")
finally:
    if srv.proc.poll() is None:
        srv.proc.kill()

# A prompt list runs as one engine request per prompt; a client that disconnects cancels every one of them.
batch_srv = Server(TESSERA, ["--max-num-seqs", "4", "--max-queue", "8", "--kv-memory", "256MiB"])
try:
    batch_srv.wait_ready()
    cancelled0 = batch_srv.metric("tessera_requests_cancelled_total")
    r = requests.post(batch_srv.url + "/v1/completions", stream=True,
                      json={"prompt": [[1, 450, 4996], [1, 450], [1, 4996]], "max_tokens": 900, "temperature": 0,
                            "stream": True})
    lines = read_events(r, 2)
    wait_for(lambda: batch_srv.metric("tessera_num_requests_running") == 3, "the list's three requests running")
    r.close()  # the client goes away
    wait_for(lambda: batch_srv.metric("tessera_requests_cancelled_total") == cancelled0 + 3, "three cancellations")
    wait_for(lambda: batch_srv.metric("tessera_kv_blocks_used") == 0, "blocks freed after the list's disconnect")
    check(batch_srv.metric("tessera_num_requests_running") == 0, "nothing running after the list's disconnect")
    check(batch_srv.stop() == 0, "second server exits 0")
finally:
    if batch_srv.proc.poll() is None:
        batch_srv.proc.kill()
if failures:
    print("server log:\n" + srv.log_text()[-3000:])
    print("0 passed, %d failed" % len(failures))
    sys.exit(1)
print("all checks passed")
