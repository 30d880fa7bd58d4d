#!/usr/bin/env bash
# perf_analyzer without Docker: the binary from the tritonclient 2.50.0 manylinux wheel (later wheels need
# glibc 2.38), Debian's libb64-0d, and libcudart from the nvidia-cuda-runtime-cu12 wheel (the binary links it
# even for CPU-only servers). Installs DEST/bin/perf_analyzer (a wrapper that sets LD_LIBRARY_PATH) and
# DEST/perf_analyzer/{perf_analyzer.bin,lib/}. Idempotent.
#   usage: docker/install_perf_analyzer.sh [PYTHON (.venv-serve/bin/python)] [DEST (.triton)]
set -euo pipefail
PY=${1:-.venv-serve/bin/python}
DEST=${2:-.triton}
WANT="tritonclient==2.50.0 nvidia-cuda-runtime-cu12==12.6.77"
STAMP=$DEST/perf_analyzer/.installed

if [[ -f $STAMP && "$(cat "$STAMP")" == "$WANT" && -x $DEST/bin/perf_analyzer ]]; then
    echo "perf_analyzer: already in $DEST"
    exit 0
fi
if ! dpkg -s libb64-0d >/dev/null 2>&1; then
    SUDO=$([[ $(id -u) == 0 ]] && echo "" || echo sudo)
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libb64-0d >/dev/null
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download -q --no-deps --only-binary :all: --platform manylinux1_x86_64 \
    --python-version 3.11 -d "$TMP/wheel" tritonclient==2.50.0
"$PY" -m pip install -q --no-deps --target "$TMP/cudart" nvidia-cuda-runtime-cu12==12.6.77
rm -rf "$DEST/perf_analyzer"
mkdir -p "$DEST/perf_analyzer/lib" "$DEST/bin"
unzip -q -o -j "$TMP"/wheel/tritonclient-2.50.0-*.whl 'tritonclient-2.50.0.data/data/bin/perf_analyzer' \
    -d "$DEST/perf_analyzer"
mv "$DEST/perf_analyzer/perf_analyzer" "$DEST/perf_analyzer/perf_analyzer.bin"
cp -a "$TMP"/cudart/nvidia/cuda_runtime/lib/. "$DEST/perf_analyzer/lib/"
chmod +x "$DEST/perf_analyzer/perf_analyzer.bin"
cat >"$DEST/bin/perf_analyzer" <<'WRAP'
#!/usr/bin/env bash
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../perf_analyzer" && pwd)
LD_LIBRARY_PATH=$HERE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec "$HERE/perf_analyzer.bin" "$@"
WRAP
chmod +x "$DEST/bin/perf_analyzer"
if ! "$DEST/bin/perf_analyzer" --version >/dev/null 2>&1 && ! "$DEST/bin/perf_analyzer" --help >/dev/null 2>&1; then
    LD_LIBRARY_PATH=$DEST/perf_analyzer/lib ldd "$DEST/perf_analyzer/perf_analyzer.bin" | grep "not found" >&2 || true
    echo "perf_analyzer: does not start" >&2
    exit 1
fi
echo "$WANT" >"$STAMP"
echo "perf_analyzer: installed into $DEST/bin/perf_analyzer"
