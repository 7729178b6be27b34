#!/usr/bin/env bash
# Installs NVRTC 13.0 and the CUDA 13.0 headers from PyPI (no CUDA toolkit, no GPU needed), for
# the kernel compile check `cargo test --release --features cuda --test it cuda::nvrtc`.
#
#   scripts/install_nvrtc.sh CACHE_DIR        # then: eval "$(scripts/install_nvrtc.sh CACHE_DIR)"
#
# Installs nvidia-cuda-nvrtc and nvidia-cuda-runtime into two separate --target folders under
# CACHE_DIR (one --target for both can skip the second into the existing `nvidia/` folder),
# adds the unversioned libnvrtc.so symlink, and prints on stdout the `export` lines:
#   QFORGE_NVRTC_LIB       path of libnvrtc.so.13
#   QFORGE_CUDA_INCLUDE    folder holding cuda_fp8.h, cuda_bf16.h
#   LD_LIBRARY_PATH        + the NVRTC lib folder (NVRTC dlopens libnvrtc-builtins.so.13.0)
# Progress goes to stderr. A second run with the same CACHE_DIR reuses what is there.
set -euo pipefail

NVRTC_VERSION=13.0.88
RUNTIME_VERSION=13.0.96

cache=${1:?usage: install_nvrtc.sh CACHE_DIR}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
nvrtc_dir=$cache/nvrtc-$NVRTC_VERSION
runtime_dir=$cache/cuda-runtime-$RUNTIME_VERSION
lib=$nvrtc_dir/nvidia/cu13/lib
inc=$runtime_dir/nvidia/cu13/include

pip_install() { # package==version target
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
        --target "$2" "$1" >&2
}

if [ ! -e "$lib/libnvrtc.so.13" ]; then
    echo "install_nvrtc: installing nvidia-cuda-nvrtc==$NVRTC_VERSION into $nvrtc_dir" >&2
    rm -rf "$nvrtc_dir"
    pip_install "nvidia-cuda-nvrtc==$NVRTC_VERSION" "$nvrtc_dir"
fi
if [ ! -e "$inc/cuda_fp8.h" ]; then
    echo "install_nvrtc: installing nvidia-cuda-runtime==$RUNTIME_VERSION into $runtime_dir" >&2
    rm -rf "$runtime_dir"
    pip_install "nvidia-cuda-runtime==$RUNTIME_VERSION" "$runtime_dir"
fi
for f in "$lib/libnvrtc.so.13" "$inc/cuda_fp8.h" "$inc/cuda_bf16.h"; do
    [ -e "$f" ] || { echo "install_nvrtc: $f is missing after the install" >&2; exit 1; }
done
ls "$lib"/libnvrtc-builtins.so.13* >/dev/null 2>&1 ||
    { echo "install_nvrtc: libnvrtc-builtins.so.13.* is missing in $lib" >&2; exit 1; }
# cudarc (cuda-12080 names) and other loaders look for the unversioned name.
ln -sf libnvrtc.so.13 "$lib/libnvrtc.so"

echo "export QFORGE_NVRTC_LIB=$lib/libnvrtc.so.13"
echo "export QFORGE_CUDA_INCLUDE=$inc"
echo "export LD_LIBRARY_PATH=$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
