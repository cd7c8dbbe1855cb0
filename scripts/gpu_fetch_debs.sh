#!/usr/bin/env bash
# Run on this (Debian 12, networked) machine before a GPU session: downloads the .debs of the build and test
# dependencies the GPU machine lacks (it has CUDA, cuBLAS, NCCL, CMake and a compiler, but no package registry)
# into .gpu-debs/ (gitignored), which the device `run` tool carries (carry: [".gpu-debs"]). scripts/gpu_run.sh
# unpacks them there with dpkg -x into a private prefix.
#
# Besides the named packages it follows the shared-library dependencies (ELF NEEDED entries) of every library
# and program they contain, mapping each soname to its Debian package with dpkg -S, and fetches those too, except
# base libraries every Linux userland has (glibc, libstdc++, zlib, ...): those must come from the GPU machine,
# since unpacking an older glibc beside a newer one breaks programs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-debs
max_mib=${GPU_DEBS_MAX_MIB:-48}  # the device tool carries 64 MiB in all, the working tree included

# Build: pkg-config, nlohmann-json, CLI11, SentencePiece, GoogleTest, Boost headers (server/), Open MPI (NCCL test).
packages=(pkgconf pkgconf-bin libpkgconf3 nlohmann-json3-dev libcli11-dev libsentencepiece-dev libsentencepiece0
          libgtest-dev libboost1.74-dev libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common)
# Sonames the GPU machine is expected to provide itself (never shipped).
base_re='^(ld-linux[-a-z0-9_]*|libc|libm|libdl|librt|libpthread|libresolv|libutil|libcrypt|libstdc\+\+|libgcc_s|libz|libzstd|liblzma|libbz2|libselinux|libpcre2-8|libudev|libsystemd|libcap|libgcrypt|libgpg-error|liblz4|libcuda|libnvidia-ml|libmvec|libanl|libnsl|libssl|libcrypto)\.so'
# Packages never shipped (the GPU machine's own, newer, versions must be used).
skip_re='^(libc6|libgcc-s1|libstdc\+\+6|gcc-[0-9]+-base|zlib1g|libzstd1|liblzma5|libbz2-1\.0|libssl3|libcrypt1)$'

ldcache=$(ldconfig -p)
need_pkgs=("${packages[@]}")
declare -A seen_pkg=()
queue=("${packages[@]}")
while ((${#queue[@]})); do
  pkg=${queue[0]}
  queue=("${queue[@]:1}")
  [[ -n ${seen_pkg[$pkg]:-} || $pkg =~ $skip_re ]] && continue
  seen_pkg[$pkg]=1
  dpkg -s "$pkg" >/dev/null 2>&1 || { echo "gpu_fetch_debs: $pkg is not installed here; run scripts/install-deps.sh" >&2; exit 1; }
  # ELF files of the package that are installed here.
  while IFS= read -r f; do
    [[ $f == */lib/* || $f == */bin/* ]] || continue  # only programs and libraries have NEEDED entries
    [[ -f $f && ! -L $f ]] || continue
    [[ $(head -c 4 "$f" 2>/dev/null | od -An -c | tr -d ' ') == '177ELF' ]] || continue
    for so in $(objdump -p "$f" 2>/dev/null | awk '/NEEDED/ {print $2}'); do
      [[ $so =~ $base_re ]] && continue
      path=$(awk -v s="$so" '$1 == s && /x86-64/ {print $NF; exit}' <<<"$ldcache")
      [[ -n $path ]] || { echo "gpu_fetch_debs: cannot resolve $so (needed by $f)" >&2; continue; }
      real=$(readlink -f "$path")
      owner=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$real" 2>/dev/null || true)
      owner=${owner%%:*}
      if [[ -n $owner && -z ${seen_pkg[$owner]:-} && ! $owner =~ $skip_re ]]; then
        queue+=("$owner")
        need_pkgs+=("$owner")
      fi
    done
  done < <(dpkg -L "$pkg")
done

mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
(cd "$out.tmp" && apt-get download "${need_pkgs[@]}")
rm -rf "$out" && mv "$out.tmp" "$out"
printf '%s\n' "${need_pkgs[@]}" >"$out/PACKAGES"
size=$(du -sm "$out" | cut -f1)
echo "gpu_fetch_debs: ${#need_pkgs[@]} packages, ${size} MiB in $out"
if ((size > max_mib)); then
  echo "gpu_fetch_debs: $out is over ${max_mib} MiB; the device tool carries 64 MiB with the working tree" >&2
  exit 1
fi
