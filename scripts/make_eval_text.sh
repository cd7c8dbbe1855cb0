#!/usr/bin/env bash
# Builds the evaluation and calibration texts for stories260K by sampling the model itself at temperature 1:
# one `tessera generate` run per seed (a story from BOS, up to 511 tokens, stopping at EOS), stories joined with
# blank lines, until the text tokenizes (BOS first) to at least the target number of tokens.
#
#   scripts/make_eval_text.sh [TESSERA] [MODELS_DIR] [OUT_DIR]
#
# Defaults: build/bin/tessera, $TESSERA_MODELS or ../shared/models beside the checkout, docs/data.
# Writes OUT_DIR/stories260K-t1-eval.txt (seeds 1000, 1001, ... until >= 20,000 tokens) and
# OUT_DIR/stories260K-t1-calib.txt (seeds 900000, 900001, ... until >= 3,000 tokens): disjoint seed ranges, so the
# calibration text is held out from the evaluation text. Generation runs with one thread so that a given build on
# a given CPU reproduces the files; other kernel sets may round a logit differently and sample another token.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tessera="${1:-$root/build/bin/tessera}"
models="${2:-${TESSERA_MODELS:-$root/../shared/models}}"
out_dir="${3:-$root/docs/data}"
model="$models/stories260K/stories260K.bin"
tokenizer="$models/stories260K/tok512.model"

[[ -x "$tessera" ]] || { echo "error: $tessera is not an executable (build tessera first)" >&2; exit 1; }
[[ -f "$model" && -f "$tokenizer" ]] || { echo "error: stories260K not found in $models" >&2; exit 1; }
mkdir -p "$out_dir"

# Tokens of a text file, BOS included, as the evaluator sees it.
count_tokens() {
  "$tessera" eval --model "$model" --tokenizer "$tokenizer" --text "$1" --ctx 512 --stride 511 --threads 1 --json |
    sed -n 's/^ *"text_tokens": *\([0-9]*\).*/\1/p'
}

# make_text OUT FIRST_SEED MIN_TOKENS
make_text() {
  local out="$1" seed="$2" min_tokens="$3" generated=0 tokens=0 tmp story
  tmp="$(mktemp)"
  : >"$out"
  while ((tokens < min_tokens)); do
    story="$("$tessera" generate --model "$model" --tokenizer "$tokenizer" --temperature 1 --seed "$seed" -n 511 \
      --no-echo --threads 1 2>"$tmp")"
    # Trailing whitespace off, a blank line between stories.
    story="$(printf '%s' "$story" | sed -e 's/[[:space:]]*$//')"
    [[ -s "$out" ]] && printf '\n\n' >>"$out"
    printf '%s' "$story" >>"$out"
    generated=$((generated + $(sed -n 's/.*generated \([0-9]*\) tokens.*/\1/p' "$tmp")))
    seed=$((seed + 1))
    # Re-tokenizing can merge differently from sampling; count for real once the estimate reaches the target.
    if ((generated >= min_tokens)); then tokens="$(count_tokens "$out")"; fi
  done
  printf '\n' >>"$out"
  rm -f "$tmp"
  echo "$out: seeds $2..$((seed - 1)), $(count_tokens "$out") tokens (BOS included), $(wc -c <"$out") bytes"
}

make_text "$out_dir/stories260K-t1-eval.txt" 1000 20000
make_text "$out_dir/stories260K-t1-calib.txt" 900000 3000
