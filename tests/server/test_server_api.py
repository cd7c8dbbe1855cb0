"""End-to-end tests of `tessera serve` on stories260K: every endpoint with requests, the openai package and curl,
streaming parsed chunk by chunk, bad input, prompt lists (batches), echo with the prompt's logprobs (checked against
generating each prompt token after its prefix), scoring a prompt with max_tokens 0 and echo, top_logprobs that hold
the chosen token, logprob token strings that spell the text, and 64 concurrent
clients whose greedy outputs must equal single runs (concurrency-bf16: the same with the weights as bf16, so the
batched bf16-activation kernels serve the load).

usage: test_server_api.py TESSERA MODELS_DIR {api|concurrency|concurrency-bf16}
"""
import json
import os
import subprocess
import sys
import threading

import requests

sys.path.insert(0, os.path.dirname(__file__))
from serve_fixture import Server, models_dir, skip  # noqa: E402

TESSERA, MODELS, GROUP = sys.argv[1], models_dir(sys.argv[2]), sys.argv[3]
MODEL = os.path.join(MODELS, "stories260K", "stories260K.bin")
TOKENIZER = os.path.join(MODELS, "stories260K", "tok512.model")
if not os.path.exists(MODEL) or not os.path.exists(TOKENIZER):
    skip("stories260K not found in " + MODELS + " (set TESSERA_MODELS)")

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL: " + what)


def sse_events(resp):
    """The data: payloads of an SSE response, one per event, as they arrive."""
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            yield line[5:].strip()


def complete(url, prompt, max_tokens, **extra):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    body.update(extra)
    r = requests.post(url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def api_tests(srv):
    url = srv.url
    # /health, /v1/models, /metrics
    check(requests.get(url + "/health").json() == {"status": "ok"}, "health ok")
    models = requests.get(url + "/v1/models").json()
    check(models["object"] == "list" and models["data"][0]["id"] == "stories260K", "v1/models lists the model")
    metrics = requests.get(url + "/metrics")
    check(metrics.status_code == 200 and "tessera_kv_blocks_free" in metrics.text, "metrics text")

    # Completions: greedy text equals the published llama2.c output's start (tests/cli golden file).
    golden = open(os.path.join(MODELS, "stories260K", "greedy-200.txt")).read()
    out = complete(url, "Once upon a time", 40)
    choice = out["choices"][0]
    check(out["object"] == "text_completion", "completion object")
    check(("Once upon a time" + choice["text"]) in golden or golden.startswith(("Once upon a time" + choice["text"])[:100]),
          "greedy completion matches llama2.c's text: %r" % choice["text"])
    check(choice["finish_reason"] == "length", "finish_reason length")
    check(out["usage"]["completion_tokens"] == 40 and out["usage"]["prompt_tokens"] == 5, "usage %r" % out["usage"])
    # Token-array prompt gives the same text; echo prepends the prompt.
    ids = [1, 403, 407, 261, 378]  # <s> Once upon a time (tok512)
    out_ids = complete(url, ids, 40)
    check(out_ids["choices"][0]["text"] == choice["text"], "token-array prompt equals text prompt")
    echo = complete(url, "Once upon a time", 5, echo=True)
    check(echo["choices"][0]["text"].startswith("Once upon a time"), "echo")
    # Stop string: cut before it, finish_reason stop.
    stop = complete(url, "Once upon a time", 40, stop=["little"])
    check(stop["choices"][0]["finish_reason"] == "stop" and "little" not in stop["choices"][0]["text"], "stop string")
    check(choice["text"].startswith(stop["choices"][0]["text"]), "stop text is a prefix")
    # logprobs: the greedy token is the top alternative.
    lp_choice = complete(url, "Once upon a time", 12, logprobs=2)["choices"][0]
    lp = lp_choice["logprobs"]
    check(len(lp["token_logprobs"]) == 12 and all(x <= 0 for x in lp["token_logprobs"]), "logprobs values")
    check(all(max(t.values()) == v for t, v in zip(lp["top_logprobs"], lp["token_logprobs"])), "greedy = top logprob")
    # Token strings read as in the text (with their leading spaces) and offsets point at them.
    check("".join(lp["tokens"]) == lp_choice["text"], "logprob tokens spell the text: %r" % lp["tokens"])
    check(all(lp_choice["text"][o:].startswith(t) for o, t in zip(lp["text_offset"], lp["tokens"])), "text_offset")
    # Seeded sampling is reproducible; n returns n choices.
    a = complete(url, "Once upon a time", 20, temperature=1.0, seed=7, n=2)
    b = complete(url, "Once upon a time", 20, temperature=1.0, seed=7, n=2)
    check(len(a["choices"]) == 2 and [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]], "seed + n")
    # Penalties are accepted and change a greedy continuation somewhere in 40 tokens.
    pen = complete(url, "Once upon a time", 40, frequency_penalty=2.0, presence_penalty=2.0)
    check(pen["choices"][0]["text"] != choice["text"], "penalties change the output")

    # Streaming, parsed chunk by chunk: the deltas add up to the non-streamed text; usage chunk; [DONE] last.
    r = requests.post(url + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0,
                                                     "stream": True, "stream_options": {"include_usage": True}},
                      stream=True)
    check(r.headers["Content-Type"].startswith("text/event-stream"), "SSE content type")
    events = list(sse_events(r))
    check(events[-1] == "[DONE]", "stream ends with [DONE]")
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    check(text == choice["text"], "streamed text equals the whole response: %r" % text)
    check(len([c for c in chunks if c["choices"]]) > 5, "stream has many chunks")
    check(chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 40, "usage chunk")
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    check(finals[-1] == "length" and all(f is None for f in finals[:-1]), "finish_reason only on the last chunk")

    # Chat (raw template for this base model) through the openai package, whole and streamed.
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    chat = client.chat.completions.create(model="stories260K", messages=[{"role": "user", "content": "Once upon a time"}],
                                          max_tokens=30, temperature=0)
    check(chat.choices[0].message.role == "assistant" and chat.choices[0].message.content == choice["text"][:len(chat.choices[0].message.content)],
          "chat through openai: %r" % chat.choices[0].message.content)
    check(chat.usage.completion_tokens == 30, "chat usage")
    stream = client.chat.completions.create(model="stories260K", messages=[{"role": "user", "content": "Once upon a time"}],
                                            max_tokens=30, temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    check(streamed == chat.choices[0].message.content, "openai chat stream equals whole")
    comp = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=40, temperature=0)
    check(comp.choices[0].text == choice["text"], "openai completions")
    chat_lp = client.chat.completions.create(model="stories260K", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=3, temperature=0, logprobs=True, top_logprobs=2)
    check(len(chat_lp.choices[0].logprobs.content) == 3, "chat logprobs")

    # TGI endpoints.
    g = requests.post(url + "/generate", json={"inputs": "Once upon a time",
                                               "parameters": {"max_new_tokens": 40, "details": True}}).json()
    check(g["generated_text"] == choice["text"], "TGI /generate greedy text")
    check(g["details"]["finish_reason"] == "length" and g["details"]["generated_tokens"] == 40, "TGI details")
    r = requests.post(url + "/generate_stream", json={"inputs": "Once upon a time", "parameters": {"max_new_tokens": 40}},
                      stream=True)
    evs = [json.loads(e) for e in sse_events(r)]
    check(len(evs) == 40 and "".join(e["token"]["text"] for e in evs) == choice["text"], "TGI stream tokens")
    check(evs[-1]["generated_text"] == choice["text"] and evs[-1]["details"]["finish_reason"] == "length", "TGI last")

    # curl: a streamed completion and the health check.
    out = subprocess.run(["curl", "-sN", url + "/v1/completions", "-H", "Content-Type: application/json", "-d",
                          json.dumps({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "stream": True})],
                         capture_output=True, text=True, timeout=60).stdout
    check(out.strip().endswith("data: [DONE]") and out.count("data: ") >= 3, "curl stream: %r" % out[-200:])
    code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url + "/health"],
                          capture_output=True, text=True, timeout=60).stdout
    check(code == "200", "curl health")

    # Bad input: each class gets the right status and an OpenAI-style error body.
    def status_of(path, data=None, body=None, method="POST"):
        r = requests.request(method, url + path, data=data, json=body, timeout=60)
        if r.status_code >= 400 and r.headers.get("Content-Type", "").startswith("application/json"):
            check("message" in r.json().get("error", {}), "error body on %s %r" % (path, (data or body)))
        return r.status_code

    check(status_of("/v1/completions", data="{not json") == 400, "malformed JSON")
    check(status_of("/v1/completions", data="[1, 2]") == 400, "non-object body")
    check(status_of("/v1/completions", body={"prompt": "x", "temperature": "hot"}) == 400, "wrong type")
    check(status_of("/v1/completions", body={"prompt": "x", "max_tokens": "5"}) == 400, "wrong type max_tokens")
    check(status_of("/v1/completions", body={"prompt": "x", "top_p": 2}) == 400, "out of range top_p")
    check(status_of("/v1/completions", body={"prompt": "x", "n": 0}) == 400, "out of range n")
    check(status_of("/v1/completions", body={"prompt": "x", "max_tokens": -1}) == 400, "negative max_tokens")
    check(status_of("/v1/completions", body={"prompt": ""}) == 400, "empty prompt")
    check(status_of("/v1/completions", body={"prompt": []}) == 400, "empty token prompt")
    check(status_of("/v1/completions", body={}) == 400, "missing prompt")
    check(status_of("/v1/completions", body={"prompt": [1, 99999]}) == 400, "token outside the vocabulary")
    check(status_of("/v1/completions", body={"prompt": "Once upon a time " * 200}) == 400, "prompt beyond context")
    check(status_of("/v1/completions", body={"prompt": "x", "max_tokens": 100000}) == 400, "max_tokens beyond context")
    check(status_of("/v1/chat/completions", body={"messages": []}) == 400, "empty messages")
    check(status_of("/v1/chat/completions", body={"messages": [{"content": "x"}]}) == 400, "message without role")
    check(status_of("/generate", body={"inputs": 5}) == 400, "TGI wrong type")
    check(status_of("/v1/completions", data="x" * 5000) == 413, "body over --max-body-bytes")
    check(status_of("/v1/nope", body={}) == 404, "unknown route")
    check(status_of("/v1/completions", method="GET") == 405, "wrong method")
    check(requests.get(url + "/health").status_code == 200, "server alive after bad input")
    check(srv.metric('tessera_requests_total{status="400"}') >= 15, "400s counted in /metrics")


def post_completion(url, body):
    r = requests.post(url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def batch_tests(srv):
    """prompt as a list of strings or of token-id lists: every prompt is its own request, n choices each."""
    url = srv.url
    prompts = ["Once upon a time", "Lily had a", "The cat"]
    alone = [complete(url, p, 20) for p in prompts]
    out = complete(url, prompts, 20, n=2)
    check([c["index"] for c in out["choices"]] == list(range(6)), "list: choice indices 0..5 in order")
    for i, c in enumerate(out["choices"]):
        check(c["text"] == alone[i // 2]["choices"][0]["text"],
              "list: choice %d is prompt %d's greedy text alone: %r" % (i, i // 2, c["text"]))
        check(c["finish_reason"] == "length", "list: finish_reason of choice %d" % i)
    want_prompt = sum(a["usage"]["prompt_tokens"] for a in alone)
    check(out["usage"] == {"prompt_tokens": want_prompt, "completion_tokens": 6 * 20,
                           "total_tokens": want_prompt + 6 * 20}, "list: usage summed %r" % out["usage"])
    # Echo gives each choice its own prompt.
    echo = complete(url, prompts, 3, echo=True)
    check([c["text"].startswith(p) for c, p in zip(echo["choices"], prompts)] == [True] * 3, "list: echo per prompt")

    # Token-id lists, with seeded sampling: each prompt gets what it gets alone.
    ids = [[1, 403, 407, 261, 378], [1, 403, 407]]
    single = [complete(url, i, 12, temperature=1.0, seed=5, n=2) for i in ids]
    batch = complete(url, ids, 12, temperature=1.0, seed=5, n=2)
    check([c["text"] for c in batch["choices"]] == [c["text"] for s in single for c in s["choices"]],
          "token-id list with n=2 and a seed equals each prompt alone")
    check(batch["choices"][0]["text"] != batch["choices"][1]["text"], "n=2 samples differ within a prompt")

    # Streaming a list: chunks carry their choice's index; per index the deltas add up to the whole text.
    r = requests.post(url + "/v1/completions", stream=True, timeout=120,
                      json={"prompt": prompts, "max_tokens": 20, "temperature": 0, "n": 2, "stream": True,
                            "stream_options": {"include_usage": True}})
    events = list(sse_events(r))
    check(events[-1] == "[DONE]", "list stream ends with [DONE]")
    chunks = [json.loads(e) for e in events[:-1]]
    texts, finals = {}, {}
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
            if ch["finish_reason"] is not None:
                finals[ch["index"]] = finals.get(ch["index"], []) + [ch["finish_reason"]]
    check(sorted(texts) == list(range(6)), "list stream: indices 0..5 (%r)" % sorted(texts))
    check(all(texts.get(i) == out["choices"][i]["text"] for i in range(6)), "list stream: texts equal the whole response")
    check(all(finals.get(i) == ["length"] for i in range(6)), "list stream: one finish_reason per choice")
    check(chunks[-1]["choices"] == [] and chunks[-1]["usage"] == out["usage"], "list stream: usage chunk")

    # Bad lists are refused whole, before anything runs.
    prompt_tokens0 = srv.metric("tessera_prompt_tokens_total")
    for bad, what in [([], "an empty list"), ([""], "a list with an empty string"),
                      (["Once", ""], "an empty string among prompts"), ([[1, 403], []], "an empty token list"),
                      (["Once", [1, 403]], "strings and token lists mixed"), ([[1, 403], "Once"], "token lists then a string"),
                      (["Once", 5], "a number among strings"), ([[1, 403], [1, 99999]], "a token outside the vocabulary"),
                      ([[1, "x"]], "a string in a token list"), ([None], "null"),
                      (["Once upon a time", "Once upon a time " * 200], "one prompt beyond the context")]:
        resp = requests.post(url + "/v1/completions", json={"prompt": bad, "max_tokens": 4}, timeout=60)
        check(resp.status_code == 400 and "message" in resp.json().get("error", {}), "400 for %s" % what)
    check(srv.metric("tessera_prompt_tokens_total") == prompt_tokens0, "nothing of a refused list was run")


def echo_logprob_tests(srv):
    """echo + logprobs: the prompt's tokens and logprobs first, each equal to the logprob of generating that token
    after the tokens before it (a different code path: sampling after a prefill of the prefix)."""
    url = srv.url
    # A prompt of likely but not only greedy tokens: a story sampled with top_k=20, so every prompt token is among
    # the 20 most likely after its prefix and appears in a prefix request's top_logprobs.
    g = requests.post(url + "/generate", timeout=120, json={
        "inputs": "Once upon a time", "parameters": {"max_new_tokens": 12, "do_sample": True, "temperature": 1.0,
                                                     "top_k": 20, "seed": 11, "details": True}}).json()
    ids = [1, 403, 407, 261, 378] + [t["id"] for t in g["details"]["tokens"] if t["id"] != 2]
    out = post_completion(url, {"prompt": ids, "max_tokens": 4, "temperature": 0, "echo": True, "logprobs": 5})
    choice = out["choices"][0]
    lp = choice["logprobs"]
    check(len(lp["tokens"]) == len(ids) + 4, "echo logprobs: prompt tokens then generated (%d)" % len(lp["tokens"]))
    check(lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None, "first prompt token has null logprob")
    check("".join(lp["tokens"]) == choice["text"], "echo tokens spell the text: %r" % lp["tokens"])
    check(all(choice["text"][o:].startswith(t) for o, t in zip(lp["text_offset"], lp["tokens"])), "echo text_offset")
    check(all(x is not None and x <= 0 for x in lp["token_logprobs"][1:]), "echo logprob values")
    plain = post_completion(url, {"prompt": ids, "max_tokens": 4, "temperature": 0, "logprobs": 5})
    check(choice["text"].endswith(plain["choices"][0]["text"]), "echo does not change the greedy output")
    check(lp["token_logprobs"][len(ids):] == plain["choices"][0]["logprobs"]["token_logprobs"],
          "echo does not change the generated tokens' logprobs")
    not_greedy = 0
    for p in range(1, len(ids)):
        ref = post_completion(url, {"prompt": ids[:p], "max_tokens": 1, "temperature": 0, "logprobs": 20})
        top = ref["choices"][0]["logprobs"]["top_logprobs"][0]
        tok = lp["tokens"][p]
        if tok not in top:
            check(False, "prompt token %d (%r) among the 20 most likely after its prefix" % (p, tok))
            continue
        check(abs(top[tok] - lp["token_logprobs"][p]) < 1e-4,
              "prompt token %d (%r): logprob %r equals generating it after its prefix %r" %
              (p, tok, lp["token_logprobs"][p], top[tok]))
        best = sorted(top.items(), key=lambda kv: -kv[1])[:5]
        got = lp["top_logprobs"][p]
        # The 5 most likely, and the prompt token itself when it is not among them (as OpenAI and vLLM).
        check(len(got) == (5 if tok in dict(best) else 6) and all(k in got and abs(got[k] - v) < 1e-4 for k, v in best),
              "prompt token %d: top_logprobs are the prefix's 5 most likely (and the token): %r" % (p, got))
        check(got.get(tok) == lp["token_logprobs"][p], "prompt token %d is in its own top_logprobs" % p)
        not_greedy += max(top.values()) > top[tok]
    check(not_greedy >= 2, "the prompt also has tokens that are not the greedy choice (%d)" % not_greedy)

    # A list with echo + logprobs, streamed: each choice's first chunk is its prompt with the prompt's logprobs.
    r = requests.post(url + "/v1/completions", stream=True, timeout=120,
                      json={"prompt": [ids, ids[:6]], "max_tokens": 4, "temperature": 0, "echo": True,
                            "logprobs": 5, "stream": True})
    chunks = [json.loads(e) for e in list(sse_events(r))[:-1]]
    first = {}
    tokens = {0: [], 1: []}
    for c in chunks:
        for ch in c["choices"]:
            first.setdefault(ch["index"], ch)
            tokens[ch["index"]] += ch["logprobs"]["tokens"] if ch["logprobs"] else []
    check(first[0]["logprobs"]["tokens"] == lp["tokens"][:len(ids)] and
          first[0]["logprobs"]["token_logprobs"] == lp["token_logprobs"][:len(ids)], "streamed echo logprobs")
    check(tokens[0] == lp["tokens"], "streamed echo tokens equal the whole response's")
    check(first[1]["logprobs"]["tokens"] == lp["tokens"][:6], "second prompt's echo logprobs")

    # Token strings are the text a token adds in context: with a leading space mid-text, without one at the very
    # start (a prompt of BOS alone), and whole characters from byte pieces; they always spell the text.
    bos = post_completion(url, {"prompt": [1], "max_tokens": 12, "temperature": 0, "logprobs": 2})["choices"][0]
    check("".join(bos["logprobs"]["tokens"]) == bos["text"], "tokens after BOS spell the text: %r / %r" %
          (bos["logprobs"]["tokens"], bos["text"]))
    check(bos["logprobs"]["tokens"][1].startswith(" "), "a later token keeps its leading space")
    utf8 = post_completion(url, {"prompt": "Der Bär sah 🐻 café", "max_tokens": 6, "temperature": 0, "echo": True,
                                 "logprobs": 1})["choices"][0]
    check("".join(utf8["logprobs"]["tokens"]) == utf8["text"], "echoed UTF-8 tokens spell the text: %r" %
          utf8["logprobs"]["tokens"])
    chat = requests.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 12, "temperature": 0,
        "logprobs": True, "top_logprobs": 2}).json()["choices"][0]
    check("".join(t["token"] for t in chat["logprobs"]["content"]) == chat["message"]["content"],
          "chat logprob tokens spell the content")


def scoring_tests(srv):
    """max_tokens 0 with echo scores the prompt (how lm-evaluation-harness computes log-likelihoods through an
    OpenAI API), and a completion's top_logprobs hold the chosen token too (k + 1 entries when it is not among the
    k most likely), as OpenAI and vLLM; chat's top_logprobs stay exactly k."""
    url = srv.url
    # A prompt that ends with an unlikely token (id 300 after a story), so its logprob is low.
    g = requests.post(url + "/generate", timeout=120, json={
        "inputs": "Once upon a time", "parameters": {"max_new_tokens": 10, "do_sample": True, "temperature": 1.0,
                                                     "top_k": 20, "seed": 5, "details": True}}).json()
    ids = [1, 403, 407, 261, 378] + [t["id"] for t in g["details"]["tokens"] if t["id"] != 2] + [300]
    zero = post_completion(url, {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 5, "temperature": 0})
    one = post_completion(url, {"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 5, "temperature": 0})
    z, o = zero["choices"][0], one["choices"][0]
    zl, ol = z["logprobs"], o["logprobs"]
    n = len(ids)
    check(len(zero["choices"]) == 1 and z["finish_reason"] == "length", "max_tokens 0: finish_reason length")
    check(zero["usage"] == {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n},
          "max_tokens 0: usage %r" % zero["usage"])
    check(len(zl["tokens"]) == n and "".join(zl["tokens"]) == z["text"], "max_tokens 0: the prompt's tokens only")
    check(len(ol["tokens"]) == n + 1 and o["text"].startswith(z["text"]) and len(o["text"]) > len(z["text"]),
          "max_tokens 0: the text is the echoed prompt, nothing generated: %r / %r" % (z["text"], o["text"]))
    check(zl["tokens"] == ol["tokens"][:n] and zl["text_offset"] == ol["text_offset"][:n], "max_tokens 0: tokens")
    check(zl["token_logprobs"][0] is None and zl["top_logprobs"][0] is None, "max_tokens 0: first token null")
    check(all(abs(a - b) <= 1e-5 for a, b in zip(zl["token_logprobs"][1:], ol["token_logprobs"][1:n])),
          "max_tokens 0: prompt logprobs equal max_tokens 1's")
    check(all(a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a)
              for a, b in zip(zl["top_logprobs"][1:], ol["top_logprobs"][1:n])),
          "max_tokens 0: prompt top_logprobs equal max_tokens 1's")
    # Every scored prompt token is in its own top_logprobs; the unlikely last one is the sixth entry.
    check(all(t.get(tok) == v for t, tok, v in zip(zl["top_logprobs"][1:], zl["tokens"][1:], zl["token_logprobs"][1:])),
          "prompt tokens are in their top_logprobs")
    check(len(zl["top_logprobs"][-1]) == 6 and min(zl["top_logprobs"][-1].values()) == zl["token_logprobs"][-1],
          "a prompt token outside the 5 most likely is added as a sixth entry: %r" % zl["top_logprobs"][-1])
    text = post_completion(url, {"prompt": "Once upon a time", "max_tokens": 0, "echo": True})["choices"][0]
    check(text["text"] == "Once upon a time" and text["logprobs"] is None, "max_tokens 0, echo without logprobs")
    # A prompt list: each choice its prompt's scores alone.
    lst = post_completion(url, {"prompt": [ids, ids[:6]], "max_tokens": 0, "echo": True, "logprobs": 5})
    short = post_completion(url, {"prompt": ids[:6], "max_tokens": 0, "echo": True, "logprobs": 5})["choices"][0]
    check([c["index"] for c in lst["choices"]] == [0, 1] and lst["choices"][0]["logprobs"] == zl and
          lst["choices"][1]["logprobs"] == short["logprobs"] and lst["choices"][1]["text"] == short["text"],
          "max_tokens 0 with a prompt list")
    check(lst["usage"] == {"prompt_tokens": n + 6, "completion_tokens": 0, "total_tokens": n + 6},
          "max_tokens 0 list usage %r" % lst["usage"])
    # Streamed: the echoed prompt with its logprobs, then the end; no generated token.
    r = requests.post(url + "/v1/completions", stream=True, timeout=120,
                      json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 5, "stream": True,
                            "stream_options": {"include_usage": True}})
    events = list(sse_events(r))
    check(r.status_code == 200 and events[-1] == "[DONE]", "max_tokens 0 stream ends with [DONE]")
    chunks = [json.loads(e) for e in events[:-1]]
    choices = [ch for c in chunks for ch in c["choices"]]
    streamed_tokens = [t for ch in choices if ch["logprobs"] for t in ch["logprobs"]["tokens"]]
    check("".join(ch["text"] for ch in choices) == z["text"] and streamed_tokens == zl["tokens"],
          "max_tokens 0 stream: the prompt and its tokens, nothing more")
    check(choices[0]["logprobs"]["token_logprobs"] == zl["token_logprobs"], "max_tokens 0 stream: prompt logprobs")
    check(choices[-1]["finish_reason"] == "length" and all(ch["finish_reason"] is None for ch in choices[:-1]),
          "max_tokens 0 stream: finish_reason length last")
    check(chunks[-1]["usage"]["completion_tokens"] == 0, "max_tokens 0 stream usage")
    r = requests.post(url + "/v1/completions", stream=True, timeout=120,
                      json={"prompt": "Once upon a time", "max_tokens": 0, "echo": True, "stream": True})
    check("".join(json.loads(e)["choices"][0]["text"] for e in list(sse_events(r))[:-1]) == "Once upon a time",
          "max_tokens 0 stream without logprobs")
    # The openai package (how clients send it).
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    comp = client.completions.create(model="stories260K", prompt=ids, max_tokens=0, echo=True, logprobs=5)
    check(comp.choices[0].logprobs.token_logprobs == zl["token_logprobs"] and comp.usage.completion_tokens == 0,
          "max_tokens 0 through the openai package")
    # Without echo there is nothing to return: 400 naming max_tokens and saying why.
    bad = requests.post(url + "/v1/completions", timeout=60, json={"prompt": "Once", "max_tokens": 0, "logprobs": 1})
    err = bad.json().get("error", {}) if bad.headers.get("Content-Type", "").startswith("application/json") else {}
    check(bad.status_code == 400 and err.get("param") == "max_tokens" and "echo" in err.get("message", ""),
          "max_tokens 0 without echo is a 400: %d %r" % (bad.status_code, bad.text))
    for body in ({"prompt": "Once", "max_tokens": 0, "echo": False},
                 {"prompt": "Once", "max_tokens": 0, "stream": True}):
        check(requests.post(url + "/v1/completions", json=body, timeout=60).status_code == 400, "400 for %r" % body)

    # Sampled tokens: each is in its own top_logprobs (k + 1 entries when it is not among the k most likely).
    sampled = complete(url, "Once upon a time", 40, temperature=1.5, seed=3, logprobs=1)["choices"][0]["logprobs"]
    pairs = list(zip(sampled["tokens"], sampled["token_logprobs"], sampled["top_logprobs"]))
    check(all(t.get(tok) == v and len(t) in (1, 2) for tok, v, t in pairs), "sampled tokens are in top_logprobs")
    check(sum(len(t) == 2 for _, _, t in pairs) >= 1 and all(len(t) == 1 or max(t.values()) > v for _, v, t in pairs),
          "sampled tokens outside the top 1 are added as a second entry (%d)" % sum(len(t) == 2 for _, _, t in pairs))
    zero_k = complete(url, "Once upon a time", 10, temperature=1.5, seed=3, logprobs=0)["choices"][0]["logprobs"]
    check(all(t == {tok: v} for tok, v, t in zip(zero_k["tokens"], zero_k["token_logprobs"], zero_k["top_logprobs"])),
          "logprobs 0: top_logprobs hold the chosen token alone")
    # Chat keeps exactly top_logprobs alternatives, also for a sampled token that is not among them.
    chat = requests.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 40, "temperature": 1.5,
        "seed": 3, "logprobs": True, "top_logprobs": 1}).json()["choices"][0]["logprobs"]["content"]
    check(all(len(t["top_logprobs"]) == 1 for t in chat), "chat top_logprobs are exactly k")
    check(any(t["top_logprobs"][0]["token"] != t["token"] for t in chat), "chat: a sampled token outside the top 1")


def concurrency_tests(srv):
    url = srv.url
    prompts = ["Once upon a time", "Lily had a", "The sun was", "Tom and his dog", "One day, a little bird",
               "There was a big", "Sam wanted to", "The cat"]
    lengths = [24, 40, 17, 33]
    # Single-request runs first (nothing else in flight).
    expected = {}
    for p in prompts:
        for n in lengths:
            expected[(p, n)] = complete(url, p, n)["choices"][0]["text"]
    results, errors = [], []
    lock = threading.Lock()

    def client(i):
        try:
            s = requests.Session()
            for j in range(3):
                p = prompts[(i + j) % len(prompts)]
                n = lengths[(i * 3 + j) % len(lengths)]
                stream = (i + j) % 2 == 0
                body = {"prompt": p, "max_tokens": n, "temperature": 0, "stream": stream}
                r = s.post(url + "/v1/completions", json=body, stream=stream, timeout=300)
                if r.status_code != 200:
                    raise RuntimeError("status %d: %s" % (r.status_code, r.text))
                if stream:
                    evs = list(sse_events(r))
                    assert evs[-1] == "[DONE]"
                    text = "".join(json.loads(e)["choices"][0]["text"] for e in evs[:-1])
                else:
                    text = r.json()["choices"][0]["text"]
                with lock:
                    results.append((p, n, text))
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append("client %d: %r" % (i, e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, "all clients succeeded: %s" % errors[:3])
    check(len(results) == 64 * 3, "all 192 requests completed (%d)" % len(results))
    mismatches = [(p, n) for p, n, text in results if text != expected[(p, n)]]
    check(not mismatches, "greedy outputs under load equal single runs; %d differ, e.g. %r" %
          (len(mismatches), mismatches[:3]))
    check(srv.metric("tessera_kv_blocks_used") == 0, "no KV blocks held after the load")
    check(srv.metric("tessera_num_requests_running") == 0, "nothing running after the load")
    print("preemptions during the load: %d" % srv.metric("tessera_preemptions_total"))


args = ["--model", MODEL, "--tokenizer", TOKENIZER, "--served-model-name", "stories260K"]
if GROUP == "api":
    args += ["--max-body-bytes", "4096"]
else:
    args += ["--max-num-seqs", "32", "--max-step-tokens", "64", "--kv-memory", "1MiB"]  # ~800 token rows: the load preempts
    if GROUP == "concurrency-bf16":  # bf16 weights: bf16 activations (the default) through the batched bf16 kernels
        args += ["--quant", "bf16"]
srv = Server(TESSERA, args)
try:
    srv.wait_ready()
    if GROUP == "api":
        api_tests(srv)
        batch_tests(srv)
        echo_logprob_tests(srv)
        scoring_tests(srv)
    else:
        concurrency_tests(srv)
    rc = srv.stop()
    check(rc == 0, "server exits 0 on SIGTERM (got %s)" % rc)
finally:
    if srv.proc.poll() is None:
        srv.proc.kill()
if failures:
    print("server log:\n" + srv.log_text()[-3000:])
    print("%d passed, %d failed" % (0, len(failures)))
    sys.exit(1)
print("all checks passed")
