#!/usr/bin/env python3
"""Reference token ids from the SentencePiece Python module, for the loader tests.

usage: sp_reference_ids.py MODEL STRINGS_JSON OUT_JSON
Reads a JSON list of strings, writes {"sentencepiece_version", "vocab_size", "bos_id", "eos_id",
"ids": [[...], ...], "decoded": [...]} with encode() / decode() of each string (no BOS/EOS added).
Exits 3 when the sentencepiece module is not installed, so the caller can skip instead of fail.
"""
import json
import sys


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import sentencepiece as spm
    except ImportError as e:
        print(f"sentencepiece Python module not available: {e}", file=sys.stderr)
        return 3
    model, strings_path, out_path = sys.argv[1:]
    sp = spm.SentencePieceProcessor(model_file=model)
    with open(strings_path, encoding="utf-8") as f:
        strings = json.load(f)
    ids = [sp.encode(s) for s in strings]
    result = {
        "sentencepiece_version": spm.__version__,
        "vocab_size": sp.vocab_size(),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "ids": ids,
        "decoded": [sp.decode(i) for i in ids],
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
