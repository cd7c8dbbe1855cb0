#!/usr/bin/env python3
"""Independent NumPy reference forward pass for Llama-family decoders (Llama 1/2/3, Mistral, Qwen2).

Deliberately simple: single-threaded, float64, whole-sequence causal attention with an explicit score
matrix, no KV cache. It is the oracle the C++ engine's logits are compared against, so it is written from
the published model definitions, not from the engine's code.

Formats:
  * llama2.c checkpoints: legacy "version 0" (7 x int32 header, negative vocab => untied classifier) and
    "version 1" (magic 0x616b3432, 256-byte header, shared-classifier flag).
  * Hugging Face directories: config.json + model.safetensors, or shards listed in
    model.safetensors.index.json. F32/F16 through the `safetensors` package, BF16 read by hand.

API:
  config, weights = load(path)
  logits(config, weights, tokens) -> np.ndarray [len(tokens)][vocab] (float64)
  Model(path).logits(tokens)      -> same, for convenience
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import sys
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

ROPE_INTERLEAVED = "interleaved"  # rotate pairs (x[2i], x[2i+1]): Meta / llama2.c layout
ROPE_HALF = "half"  # rotate pairs (x[i], x[i + d/2]): Hugging Face rotate_half layout


@dataclasses.dataclass
class Config:
    arch: str = "llama"
    dim: int = 0
    hidden_dim: int = 0
    n_layers: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    max_seq_len: int = 0
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_style: str = ROPE_INTERLEAVED
    rope_scaling: Optional[dict] = None  # {"factor", "low_freq_factor", "high_freq_factor", "original_max_position"}
    tied_embeddings: bool = False
    qkv_bias: bool = False
    sliding_window: Optional[int] = None


# --------------------------------------------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------------------------------------------


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def rope_inverse_frequencies(cfg: Config) -> np.ndarray:
    """theta^(-2i/d) for i < d/2, with Llama-3.1 frequency scaling when configured."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    s = cfg.rope_scaling
    if not s:
        return inv_freq
    factor = s["factor"]
    low = s["low_freq_factor"]
    high = s["high_freq_factor"]
    old_ctx = s["original_max_position"]
    low_freq_wavelen = old_ctx / low
    high_freq_wavelen = old_ctx / high
    out = np.empty_like(inv_freq)
    for i, f in enumerate(inv_freq):
        wavelen = 2.0 * math.pi / f
        if wavelen < high_freq_wavelen:  # high frequency: unchanged
            out[i] = f
        elif wavelen > low_freq_wavelen:  # low frequency: slowed down by `factor`
            out[i] = f / factor
        else:  # in between: interpolate
            smooth = (old_ctx / wavelen - low) / (high - low)
            out[i] = (1.0 - smooth) * f / factor + smooth * f
    return out


def apply_rope(x: np.ndarray, positions: np.ndarray, cfg: Config) -> np.ndarray:
    """x: [n][heads][head_dim]; returns the rotated copy."""
    inv_freq = rope_inverse_frequencies(cfg)
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [n][d/2]
    cos = np.cos(angles)[:, None, :]
    sin = np.sin(angles)[:, None, :]
    out = np.empty_like(x)
    if cfg.rope_style == ROPE_INTERLEAVED:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    elif cfg.rope_style == ROPE_HALF:
        h = cfg.head_dim // 2
        a, b = x[..., :h], x[..., h:]
        out[..., :h] = a * cos - b * sin
        out[..., h:] = a * sin + b * cos
    else:
        raise ValueError(f"unknown rope style {cfg.rope_style!r}")
    return out


def logits(
    cfg: Config,
    weights: Dict[str, np.ndarray],
    tokens: Sequence[int],
    act_round: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> np.ndarray:
    """Full causal forward over `tokens` at positions 0..n-1; returns logits [n][vocab] in float64.

    act_round, when given, is applied to the input of every linear layer (to model kernels that round the
    activations, e.g. to bfloat16, before multiplying)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(tokens)
    if n == 0:
        return np.zeros((0, cfg.vocab_size))
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError("token id outside the vocabulary")
    if cfg.sliding_window is not None and n > cfg.sliding_window:
        raise NotImplementedError("sequence longer than the sliding window")
    H, KV, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    group = H // KV
    positions = np.arange(n)

    def linear(a: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (a if act_round is None else act_round(a)) @ w.T

    causal = np.triu(np.ones((n, n), dtype=bool), k=1)  # True above the diagonal = future = masked

    x = weights["tok_embeddings"][tokens].astype(np.float64)  # [n][dim]
    for l in range(cfg.n_layers):
        p = f"layers.{l}."
        h = rmsnorm(x, weights[p + "attn_norm"], cfg.rms_eps)
        q = linear(h, weights[p + "wq"])
        k = linear(h, weights[p + "wk"])
        v = linear(h, weights[p + "wv"])
        if cfg.qkv_bias:
            q = q + weights[p + "bq"]
            k = k + weights[p + "bk"]
            v = v + weights[p + "bv"]
        q = apply_rope(q.reshape(n, H, hd), positions, cfg)
        k = apply_rope(k.reshape(n, KV, hd), positions, cfg)
        v = v.reshape(n, KV, hd)
        att = np.empty((n, H, hd))
        for head in range(H):
            kvh = head // group
            scores = q[:, head, :] @ k[:, kvh, :].T / math.sqrt(hd)  # [n][n]
            scores = np.where(causal, -np.inf, scores)
            scores = scores - scores.max(axis=1, keepdims=True)
            prob = np.exp(scores)
            prob /= prob.sum(axis=1, keepdims=True)
            att[:, head, :] = prob @ v[:, kvh, :]
        x = x + linear(att.reshape(n, H * hd), weights[p + "wo"])
        h = rmsnorm(x, weights[p + "ffn_norm"], cfg.rms_eps)
        ffn = silu(linear(h, weights[p + "w_gate"])) * linear(h, weights[p + "w_up"])
        x = x + linear(ffn, weights[p + "w_down"])
    x = rmsnorm(x, weights["final_norm"], cfg.rms_eps)
    return linear(x, weights["lm_head"])


class Model:
    def __init__(self, path: str):
        self.path = path
        self.config, self.weights = load(path)

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        return logits(self.config, self.weights, tokens)

    def greedy(self, prompt: Sequence[int], steps: int) -> List[int]:
        """Greedy continuation (recomputes the whole sequence each step; fine for tiny models)."""
        seq = list(prompt)
        out = []
        for _ in range(steps):
            nxt = int(np.argmax(self.logits(seq)[-1]))
            out.append(nxt)
            seq.append(nxt)
        return out


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def teacher_forced_nll(lg: np.ndarray, tokens: Sequence[int]) -> float:
    """Sum over i of -log p(tokens[i+1] | tokens[..i]) given logits of every position."""
    lp = log_softmax(lg[:-1])
    return float(-sum(lp[i, tokens[i + 1]] for i in range(len(tokens) - 1)))


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def load(path: str):
    """Returns (Config, weights) where weights maps canonical names to float64 arrays."""
    if os.path.isdir(path):
        return load_hf(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if len(magic) == 4 and struct.unpack("<I", magic)[0] == 0x616B3432:
        return load_llama2c_v1(path)
    return load_llama2c_legacy(path)


LLAMA2C_LAYER_ORDER = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_down", "w_up")


def _llama2c_config(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len, tied) -> Config:
    return Config(arch="llama", dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                  head_dim=dim // n_heads, vocab_size=vocab, max_seq_len=seq_len, rms_eps=1e-5,
                  rope_theta=10000.0, rope_style=ROPE_INTERLEAVED, tied_embeddings=tied)


def _shapes(cfg: Config):
    d, hd, q, kv = cfg.dim, cfg.hidden_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return {"attn_norm": (d,), "wq": (q, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, q), "ffn_norm": (d,),
            "w_gate": (hd, d), "w_down": (d, hd), "w_up": (hd, d)}


def load_llama2c_legacy(path: str):
    raw = np.fromfile(path, dtype="<f4")
    header = np.frombuffer(raw[:7].tobytes(), dtype="<i4")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = (int(v) for v in header)
    tied = vocab > 0
    vocab = abs(vocab)
    cfg = _llama2c_config(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len, tied)
    data = raw[7:].astype(np.float64)
    off = 0

    def take(shape):
        nonlocal off
        size = int(np.prod(shape))
        if off + size > data.size:
            raise ValueError(f"{path}: file too short")
        a = data[off:off + size].reshape(shape)
        off += size
        return a

    w = {"tok_embeddings": take((vocab, dim))}
    shapes = _shapes(cfg)
    for name in LLAMA2C_LAYER_ORDER:
        for l in range(n_layers):
            w[f"layers.{l}.{name}"] = take(shapes[name])
    w["final_norm"] = take((dim,))
    take((seq_len, cfg.head_dim // 2))  # freq_cis_real (unused)
    take((seq_len, cfg.head_dim // 2))  # freq_cis_imag (unused)
    w["lm_head"] = w["tok_embeddings"] if tied else take((vocab, dim))
    if off != data.size:
        raise ValueError(f"{path}: {data.size - off} trailing floats")
    return cfg, w


def load_llama2c_v1(path: str):
    with open(path, "rb") as f:
        blob = f.read()
    magic, version = struct.unpack_from("<Ii", blob, 0)
    if version != 1:
        raise ValueError(f"{path}: llama2.c version {version} not supported")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack_from("<7i", blob, 8)
    shared = blob[36] != 0
    cfg = _llama2c_config(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len, shared)
    data = np.frombuffer(blob, dtype="<f4", offset=256).astype(np.float64)
    off = 0

    def take(shape):
        nonlocal off
        size = int(np.prod(shape))
        a = data[off:off + size].reshape(shape)
        off += size
        return a

    shapes = _shapes(cfg)
    w = {}
    for name in ("attn_norm", "ffn_norm"):
        for l in range(n_layers):
            w[f"layers.{l}.{name}"] = take(shapes[name])
    w["final_norm"] = take((dim,))
    w["tok_embeddings"] = take((vocab, dim))
    for name in ("wq", "wk", "wv", "wo", "w_gate", "w_down", "w_up"):
        for l in range(n_layers):
            w[f"layers.{l}.{name}"] = take(shapes[name])
    w["lm_head"] = w["tok_embeddings"] if shared else take((vocab, dim))
    if off != data.size:
        raise ValueError(f"{path}: {data.size - off} trailing floats")
    return cfg, w


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """All tensors of one .safetensors file as float64 arrays. BF16 is decoded by hand (numpy has no bf16)."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + header_len])
    header.pop("__metadata__", None)
    dtypes = {v["dtype"] for v in header.values()}
    if dtypes <= {"F32", "F16"}:
        from safetensors.numpy import load_file
        return {k: v.astype(np.float64) for k, v in load_file(path).items()}
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        buf = blob[base + begin:base + end]
        shape = tuple(info["shape"])
        if info["dtype"] == "BF16":
            bits = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            a = bits.view(np.float32)
        elif info["dtype"] == "F16":
            a = np.frombuffer(buf, dtype="<f2")
        elif info["dtype"] == "F32":
            a = np.frombuffer(buf, dtype="<f4")
        else:
            raise ValueError(f"{path}: {name}: dtype {info['dtype']} not supported")
        out[name] = a.reshape(shape).astype(np.float64)
    return out


def _hf_config(hf: dict) -> Config:
    archs = hf.get("architectures") or ["LlamaForCausalLM"]
    arch = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}.get(archs[0])
    if arch is None:
        raise ValueError(f"architecture {archs[0]} not supported")
    dim = hf["hidden_size"]
    n_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim")
    for unsupported in ("attention_bias", "mlp_bias"):
        if hf.get(unsupported):
            raise NotImplementedError(f"{unsupported} = true is not modelled by this reference")
    cfg = Config(
        arch=arch, dim=dim, hidden_dim=hf["intermediate_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=head_dim or dim // n_heads,
        vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        rms_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=hf.get("rope_theta", 10000.0), rope_style=ROPE_HALF,
        tied_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=(arch == "qwen2"))
    rs = hf.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "llama3":
            cfg.rope_scaling = {"factor": rs["factor"], "low_freq_factor": rs.get("low_freq_factor", 1.0),
                                "high_freq_factor": rs.get("high_freq_factor", 4.0),
                                "original_max_position": rs.get("original_max_position_embeddings", 8192)}
        elif kind != "default":
            raise ValueError(f"rope_scaling type {kind!r} not supported")
    if arch == "mistral":
        cfg.sliding_window = hf.get("sliding_window")
    if arch == "qwen2" and hf.get("use_sliding_window"):
        cfg.sliding_window = hf.get("sliding_window")
    return cfg


def load_hf(path: str):
    with open(os.path.join(path, "config.json")) as f:
        cfg = _hf_config(json.load(f))
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    t: Dict[str, np.ndarray] = {}
    for name in files:
        t.update(read_safetensors(os.path.join(path, name)))

    def get(name, shape):
        a = t[name]
        if a.shape != tuple(shape):
            raise ValueError(f"{name}: shape {a.shape}, expected {tuple(shape)}")
        return a

    shapes = _shapes(cfg)
    hf_names = {"attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight",
                "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight", "wo": "self_attn.o_proj.weight",
                "ffn_norm": "post_attention_layernorm.weight", "w_gate": "mlp.gate_proj.weight",
                "w_up": "mlp.up_proj.weight", "w_down": "mlp.down_proj.weight"}
    w = {"tok_embeddings": get("model.embed_tokens.weight", (cfg.vocab_size, cfg.dim)),
         "final_norm": get("model.norm.weight", (cfg.dim,))}
    for l in range(cfg.n_layers):
        for ours, theirs in hf_names.items():
            w[f"layers.{l}.{ours}"] = get(f"model.layers.{l}.{theirs}", shapes[ours])
        if cfg.qkv_bias:
            q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
            w[f"layers.{l}.bq"] = get(f"model.layers.{l}.self_attn.q_proj.bias", (q,))
            w[f"layers.{l}.bk"] = get(f"model.layers.{l}.self_attn.k_proj.bias", (kv,))
            w[f"layers.{l}.bv"] = get(f"model.layers.{l}.self_attn.v_proj.bias", (kv,))
    if cfg.tied_embeddings or "lm_head.weight" not in t:
        w["lm_head"] = w["tok_embeddings"]
    else:
        w["lm_head"] = get("lm_head.weight", (cfg.vocab_size, cfg.dim))
    return cfg, w


# --------------------------------------------------------------------------------------------------------------
# Command line: print logits or greedy ids for a model
# --------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--tokens", help="comma-separated ids (default: BOS only)", default="1")
    ap.add_argument("--greedy", type=int, default=0, help="print this many greedy ids after the tokens")
    ap.add_argument("--out", help="write logits [n][vocab] as float32 .npy")
    args = ap.parse_args(argv)
    m = Model(args.model)
    toks = [int(t) for t in args.tokens.split(",") if t]
    print(m.config, file=sys.stderr)
    lg = m.logits(toks)
    if args.out:
        np.save(args.out, lg.astype(np.float32))
    print("argmax per position:", " ".join(str(int(i)) for i in lg.argmax(axis=1)))
    if args.greedy:
        print("greedy:", " ".join(str(i) for i in m.greedy(toks, args.greedy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
