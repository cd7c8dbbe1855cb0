#!/usr/bin/env python3
"""Writes tiny random Llama-family checkpoints for tests.

Formats:
  hf          Hugging Face directory: config.json + model.safetensors (or N shards with
              model.safetensors.index.json), storage f32 / f16 / bf16.
  llama2c     llama2.c legacy ("version 0") .bin: 7 x int32 header, fp32, negative vocab when untied.
  llama2c-v1  llama2.c "version 1" .bin: magic 0x616b3432, 256-byte header, shared-classifier flag.

The same seed gives the same model in every format: the weights are drawn in the Hugging Face layout and
the llama2.c writers undo the q/k row permutation that HF's conversion script applies (Meta interleaved RoPE
pairs -> rotate_half), so an llama2.c file and an HF directory of one Spec compute the same function
(up to the f16/bf16 rounding of the HF storage dtype).

Everything is written by hand (safetensors: 8-byte little-endian header length, JSON header padded with
spaces to 8 bytes, then the raw little-endian tensor data), bf16 as the top 16 bits of fp32 with
round-to-nearest-even.

Examples:
  make_tiny_checkpoint.py /tmp/gqa --preset gqa
  make_tiny_checkpoint.py /tmp/q2 --arch qwen2 --dim 48 --heads 4 --kv-heads 2 --dtype bf16 --shards 2
  make_tiny_checkpoint.py /tmp/m.bin --format llama2c --untied
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import struct
import sys
from typing import Dict, List, Optional

import numpy as np


@dataclasses.dataclass
class Spec:
    arch: str = "llama"  # llama | mistral | qwen2
    dim: int = 48
    hidden_dim: int = 100
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: Optional[int] = None  # None: dim // n_heads (and not written to config.json)
    vocab_size: int = 97
    max_seq_len: int = 64
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # HF "rope_scaling" dict, e.g. llama3_scaling()
    tied: bool = False
    dtype: str = "f32"  # f32 | f16 | bf16 (HF storage only)
    shards: int = 1
    seed: int = 0
    embed_scale: float = 1.0  # std of the token embeddings; small values make rms_eps matter
    # config.json with only the required keys: num_key_value_heads, rms_norm_eps, rope_theta, tie_word_embeddings,
    # max_position_embeddings, head_dim take the transformers defaults (MHA, 1e-6, 10000, untied, 2048).
    minimal_config: bool = False

    @property
    def hd(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads


def llama3_scaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=64) -> dict:
    """A Llama-3.1 rope_scaling block. The small original context puts some frequencies of a tiny head in
    each of the three bands (kept, interpolated, divided by factor)."""
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position}


PRESETS: Dict[str, Spec] = {
    "mha": Spec(n_heads=4, n_kv_heads=4),
    "gqa": Spec(n_heads=4, n_kv_heads=2),
    "gqa-tied": Spec(n_heads=6, n_kv_heads=2, head_dim=8, tied=True),
    "qwen2": Spec(arch="qwen2", n_heads=4, n_kv_heads=2, tied=True, rope_theta=1000000.0, rms_eps=1e-6),
    "mistral": Spec(arch="mistral", n_heads=4, n_kv_heads=1, head_dim=8),
    "llama3": Spec(n_heads=4, n_kv_heads=2, rope_theta=500000.0, rope_scaling=llama3_scaling()),
    # Embeddings with mean square ~1e-3: the first RMSNorm is sensitive to rms_norm_eps.
    "eps": Spec(n_heads=4, n_kv_heads=2, rms_eps=1e-3, embed_scale=0.03),
}


# --------------------------------------------------------------------------------------------------------------
# Random weights (HF names and layout)
# --------------------------------------------------------------------------------------------------------------


def random_weights(spec: Spec) -> Dict[str, np.ndarray]:
    """float32 arrays keyed by Hugging Face tensor names; lm_head.weight only when untied."""
    rng = np.random.default_rng(spec.seed)
    d, h, hd = spec.dim, spec.hidden_dim, spec.hd
    q, kv = spec.n_heads * hd, spec.n_kv_heads * hd

    def lin(rows, cols, gain=1.0):
        return (rng.standard_normal((rows, cols)) * gain / math.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": (spec.embed_scale * rng.standard_normal((spec.vocab_size, d))).astype(np.float32)}
    for l in range(spec.n_layers):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(d)
        # q and k larger than 1/sqrt(fan_in) so attention is far from uniform and RoPE errors show.
        w[p + "self_attn.q_proj.weight"] = lin(q, d, 1.5)
        w[p + "self_attn.k_proj.weight"] = lin(kv, d, 1.5)
        w[p + "self_attn.v_proj.weight"] = lin(kv, d)
        if spec.arch == "qwen2":
            w[p + "self_attn.q_proj.bias"] = (0.5 * rng.standard_normal(q)).astype(np.float32)
            w[p + "self_attn.k_proj.bias"] = (0.5 * rng.standard_normal(kv)).astype(np.float32)
            w[p + "self_attn.v_proj.bias"] = (0.5 * rng.standard_normal(kv)).astype(np.float32)
        w[p + "self_attn.o_proj.weight"] = lin(d, q)
        w[p + "post_attention_layernorm.weight"] = norm(d)
        w[p + "mlp.gate_proj.weight"] = lin(h, d)
        w[p + "mlp.up_proj.weight"] = lin(h, d)
        w[p + "mlp.down_proj.weight"] = lin(d, h)
    w["model.norm.weight"] = norm(d)
    if not spec.tied:
        w["lm_head.weight"] = lin(spec.vocab_size, d, 2.0)
    elif spec.embed_scale != 1.0:
        raise ValueError("a tied lm_head needs embed_scale 1 (else the logits are flat)")
    return w


def hf_to_meta_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of HF's convert_llama_weights_to_hf permute(): rotate_half row order -> interleaved pairs."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def meta_to_hf_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's permute(): interleaved pairs (Meta / llama2.c) -> rotate_half row order."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


# --------------------------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------------------------

ST_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def f32_to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16; returns the uint16 bit patterns (finite inputs)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def encode(a: np.ndarray, dtype: str) -> bytes:
    if dtype == "f32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "f16":
        return np.ascontiguousarray(a, dtype="<f2").tobytes()
    if dtype == "bf16":
        return f32_to_bf16_bits(a).astype("<u2").tobytes()
    raise ValueError(f"unknown dtype {dtype}")


def write_safetensors(path: str, tensors: Dict[str, np.ndarray], dtype: str) -> int:
    """Writes one file; returns the number of data bytes."""
    header = {"__metadata__": {"format": "pt"}}
    blobs: List[bytes] = []
    offset = 0
    for name, a in tensors.items():
        b = encode(a, dtype)
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    return offset


def hf_config(spec: Spec) -> dict:
    arch_names = {"llama": ("LlamaForCausalLM", "llama"), "mistral": ("MistralForCausalLM", "mistral"),
                  "qwen2": ("Qwen2ForCausalLM", "qwen2")}
    if spec.arch not in arch_names:
        raise ValueError(f"unknown arch {spec.arch}")
    cls, model_type = arch_names[spec.arch]
    cfg = {
        "architectures": [cls],
        "model_type": model_type,
        "hidden_size": spec.dim,
        "intermediate_size": spec.hidden_dim,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_seq_len,
        "rms_norm_eps": spec.rms_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": spec.rope_scaling,
        "tie_word_embeddings": spec.tied,
        "hidden_act": "silu",
        "torch_dtype": TORCH_DTYPES[spec.dtype],
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if spec.minimal_config:
        if (spec.n_kv_heads != spec.n_heads or spec.head_dim is not None or spec.rope_scaling or spec.tied
                or spec.rms_eps != 1e-6 or spec.rope_theta != 10000.0):
            raise ValueError("minimal_config needs MHA, default head_dim, no rope_scaling, untied, eps 1e-6, theta 1e4")
        keep = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "vocab_size", "torch_dtype")
        return {k: cfg[k] for k in keep}
    if spec.head_dim is not None:
        if spec.arch == "qwen2" and spec.head_dim != spec.dim // spec.n_heads:
            raise ValueError("Qwen2 has no head_dim setting: head_dim must be hidden_size / num_attention_heads")
        cfg["head_dim"] = spec.head_dim
    if spec.arch == "llama":
        cfg["attention_bias"] = False
    if spec.arch == "mistral":
        cfg["sliding_window"] = 4096
    if spec.arch == "qwen2":
        cfg["use_sliding_window"] = False
        cfg["sliding_window"] = 4096
        cfg["max_window_layers"] = spec.n_layers
    return cfg


def write_hf(spec: Spec, out_dir: str, weights: Optional[Dict[str, np.ndarray]] = None) -> str:
    """Writes config.json and the safetensors file(s) into out_dir (created). Returns out_dir."""
    w = weights if weights is not None else random_weights(spec)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(spec), f, indent=2)
    names = list(w)
    if spec.shards <= 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), w, spec.dtype)
        return out_dir
    # Contiguous runs of tensors per shard, like HF's size-based splitting (a layer may straddle two shards).
    n = spec.shards
    bounds = [round(i * len(names) / n) for i in range(n + 1)]
    weight_map, total = {}, 0
    for i in range(n):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: w[k] for k in names[bounds[i]:bounds[i + 1]]}
        total += write_safetensors(os.path.join(out_dir, fname), part, spec.dtype)
        weight_map.update({k: fname for k in part})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return out_dir


# --------------------------------------------------------------------------------------------------------------
# llama2.c
# --------------------------------------------------------------------------------------------------------------


def _llama2c_check(spec: Spec):
    if spec.arch != "llama" or spec.rope_scaling or spec.hd * spec.n_heads != spec.dim:
        raise ValueError("llama2.c format holds only plain Llama with head_dim = dim / n_heads")
    if spec.rms_eps != 1e-5 or spec.rope_theta != 10000.0:
        raise ValueError("llama2.c format fixes rms_eps = 1e-5 and rope_theta = 10000")


def _meta_layers(spec: Spec, w: Dict[str, np.ndarray]) -> Dict[str, List[np.ndarray]]:
    L = range(spec.n_layers)

    def get(name):
        return [w[f"model.layers.{l}.{name}"] for l in L]

    return {
        "attn_norm": get("input_layernorm.weight"),
        "wq": [hf_to_meta_rows(a, spec.n_heads) for a in get("self_attn.q_proj.weight")],
        "wk": [hf_to_meta_rows(a, spec.n_kv_heads) for a in get("self_attn.k_proj.weight")],
        "wv": get("self_attn.v_proj.weight"),
        "wo": get("self_attn.o_proj.weight"),
        "ffn_norm": get("post_attention_layernorm.weight"),
        "w1": get("mlp.gate_proj.weight"),
        "w2": get("mlp.down_proj.weight"),
        "w3": get("mlp.up_proj.weight"),
    }


def write_llama2c(spec: Spec, path: str, version: int = 0, weights: Optional[Dict[str, np.ndarray]] = None) -> str:
    _llama2c_check(spec)
    w = weights if weights is not None else random_weights(spec)
    m = _meta_layers(spec, w)
    emb = w["model.embed_tokens.weight"]
    out = [] if spec.tied else [w["lm_head.weight"]]
    hdr = (spec.dim, spec.hidden_dim, spec.n_layers, spec.n_heads, spec.n_kv_heads)
    with open(path, "wb") as f:
        if version == 0:
            vocab = spec.vocab_size if spec.tied else -spec.vocab_size
            f.write(struct.pack("<7i", *hdr, vocab, spec.max_seq_len))
            arrays = [emb]
            for name in ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"):
                arrays += m[name]
            arrays.append(w["model.norm.weight"])
            half = spec.hd // 2
            inv = 1.0 / (10000.0 ** (np.arange(0, spec.hd, 2) / spec.hd))
            ang = np.arange(spec.max_seq_len)[:, None] * inv[None, :half]
            arrays += [np.cos(ang), np.sin(ang)]
            arrays += out
        elif version == 1:
            f.write(struct.pack("<Ii7iB", 0x616B3432, 1, *hdr, spec.vocab_size, spec.max_seq_len, int(spec.tied)))
            f.write(b"\0" * (256 - f.tell()))
            arrays = m["attn_norm"] + m["ffn_norm"] + [w["model.norm.weight"], emb]
            for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
                arrays += m[name]
            arrays += out
        else:
            raise ValueError(f"llama2.c version {version} not supported")
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return path


def write(spec: Spec, out: str, fmt: str = "hf") -> str:
    if fmt == "hf":
        return write_hf(spec, out)
    if fmt == "llama2c":
        return write_llama2c(spec, out, 0)
    if fmt == "llama2c-v1":
        return write_llama2c(spec, out, 1)
    raise ValueError(f"unknown format {fmt}")


def llama2c_to_hf(src: str, out_dir: str, dtype: str = "f32", shards: int = 1) -> str:
    """Converts a llama2.c checkpoint (e.g. stories260K.bin) into an HF directory computing the same function."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import llama_reference as R
    cfg, rw = R.load(src)
    spec = Spec(dim=cfg.dim, hidden_dim=cfg.hidden_dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                n_kv_heads=cfg.n_kv_heads, vocab_size=cfg.vocab_size, max_seq_len=cfg.max_seq_len,
                tied=cfg.tied_embeddings, dtype=dtype, shards=shards)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    w = {"model.embed_tokens.weight": f32(rw["tok_embeddings"])}
    for l in range(cfg.n_layers):
        p, q = f"model.layers.{l}.", f"layers.{l}."
        w[p + "input_layernorm.weight"] = f32(rw[q + "attn_norm"])
        w[p + "self_attn.q_proj.weight"] = f32(meta_to_hf_rows(rw[q + "wq"], cfg.n_heads))
        w[p + "self_attn.k_proj.weight"] = f32(meta_to_hf_rows(rw[q + "wk"], cfg.n_kv_heads))
        w[p + "self_attn.v_proj.weight"] = f32(rw[q + "wv"])
        w[p + "self_attn.o_proj.weight"] = f32(rw[q + "wo"])
        w[p + "post_attention_layernorm.weight"] = f32(rw[q + "ffn_norm"])
        w[p + "mlp.gate_proj.weight"] = f32(rw[q + "w_gate"])
        w[p + "mlp.up_proj.weight"] = f32(rw[q + "w_up"])
        w[p + "mlp.down_proj.weight"] = f32(rw[q + "w_down"])
    w["model.norm.weight"] = f32(rw["final_norm"])
    if not cfg.tied_embeddings:
        w["lm_head.weight"] = f32(rw["lm_head"])
    return write_hf(spec, out_dir, w)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory (hf) or file (llama2c)")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset; other flags override it")
    ap.add_argument("--format", choices=["hf", "llama2c", "llama2c-v1"], default="hf")
    ap.add_argument("--arch", choices=["llama", "mistral", "qwen2"])
    ap.add_argument("--dim", type=int)
    ap.add_argument("--hidden", type=int, dest="hidden_dim")
    ap.add_argument("--layers", type=int, dest="n_layers")
    ap.add_argument("--heads", type=int, dest="n_heads")
    ap.add_argument("--kv-heads", type=int, dest="n_kv_heads")
    ap.add_argument("--head-dim", type=int, dest="head_dim")
    ap.add_argument("--vocab", type=int, dest="vocab_size")
    ap.add_argument("--max-seq", type=int, dest="max_seq_len")
    ap.add_argument("--theta", type=float, dest="rope_theta")
    ap.add_argument("--eps", type=float, dest="rms_eps")
    ap.add_argument("--llama3-scaling", action="store_true", help="add a Llama-3.1 rope_scaling block")
    tie = ap.add_mutually_exclusive_group()
    tie.add_argument("--tied", action="store_true", default=None)
    tie.add_argument("--untied", action="store_false", dest="tied")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"])
    ap.add_argument("--shards", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--from-llama2c", metavar="BIN", help="convert this llama2.c checkpoint to HF instead")
    args = ap.parse_args(argv)

    if args.from_llama2c:
        llama2c_to_hf(args.from_llama2c, args.out, args.dtype or "f32", args.shards or 1)
        print(f"wrote {args.out}")
        return 0
    spec = dataclasses.replace(PRESETS[args.preset]) if args.preset else Spec()
    for field in dataclasses.fields(Spec):
        v = getattr(args, field.name, None)
        if v is not None:
            setattr(spec, field.name, v)
    if args.llama3_scaling:
        spec.rope_scaling = llama3_scaling()
    write(spec, args.out, args.format)
    print(f"wrote {args.out}: {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
