#!/usr/bin/env bash
# Installs everything Tessera's build and tests need on Debian 12, non-interactively; safe to run again.
#   - Debian packages: compiler, CMake, SentencePiece, nlohmann/json, CLI11, GoogleTest, Open MPI, Boost
#     (Beast/Asio headers for the HTTP server), curl (server tests)
#   - a Python virtual environment in .venv with the test-side tools (numpy, safetensors, sentencepiece,
#     requests and openai for the server tests, matplotlib for scripts/plot_bench.py)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config git
          libsentencepiece-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev
          libopenmpi-dev openmpi-bin
          libboost-dev curl
          python3 python3-venv clang-format)
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[install-deps] installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "[install-deps] Debian packages already installed"
fi

if [ ! -x .venv/bin/python ]; then
  echo "[install-deps] creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/reference/requirements.txt matplotlib
echo "[install-deps] done"
