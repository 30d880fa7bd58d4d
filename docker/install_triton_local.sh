#!/usr/bin/env bash
# Triton without Docker: tritonserver (2.51.0), its shared libraries and the Python backend with the stub for
# the serving venv's Python, taken from the nvidia-pytriton wheel and laid out as a plain Triton install:
#   DEST/bin/tritonserver  DEST/lib/*.so  DEST/backends/python/{libtriton_python.so,triton_python_backend_stub,...}
# tritonserver's RPATH (${ORIGIN}/../lib) finds DEST/lib; the stub needs DEST/lib on LD_LIBRARY_PATH
# (client/server.py sets it). Idempotent: DEST/.installed records what is there.
# DEST is .triton, not triton/: a folder named triton/ in the repository root is importable as the namespace
# package `triton` (cwd is on sys.path), and torch then takes it for OpenAI Triton and fails to import.
#   usage: docker/install_triton_local.sh [PYTHON (.venv-serve/bin/python)] [DEST (.triton)]
set -euo pipefail
PY=${1:-.venv-serve/bin/python}
DEST=${2:-.triton}
WHEEL=nvidia-pytriton==0.7.0
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
WANT="$WHEEL python$PYVER"
STAMP=$DEST/.installed

if [[ -f $STAMP && "$(cat "$STAMP")" == "$WANT" && -x $DEST/bin/tritonserver ]]; then
    echo "triton: $WANT already in $DEST"
    exit 0
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip install -q --no-deps --target "$TMP" "$WHEEL"
SRC=$TMP/pytriton/tritonserver
STUB=$SRC/python_backend_stubs/$PYVER/triton_python_backend_stub
[[ -f $STUB ]] || { echo "no Python backend stub for Python $PYVER in $WHEEL" >&2; exit 1; }

rm -rf "$DEST/bin" "$DEST/lib" "$DEST/backends" "$DEST/caches" "$STAMP"
mkdir -p "$DEST/bin" "$DEST/lib" "$DEST/backends"
cp "$SRC/bin/tritonserver" "$DEST/bin/"
cp -r "$TMP/nvidia_pytriton.libs/." "$DEST/lib/"
cp -r "$SRC/backends/python" "$DEST/backends/"
cp "$STUB" "$DEST/backends/python/"
cp -r "$SRC/caches" "$DEST/"
echo "*" >"$DEST/.gitignore"  # keeps git status clean
chmod +x "$DEST/bin/tritonserver" "$DEST/backends/python/triton_python_backend_stub"

# The server and the stub find all their libraries (the stub through LD_LIBRARY_PATH, as at run time).
if ldd "$DEST/bin/tritonserver" | grep "not found" ||
    LD_LIBRARY_PATH=$DEST/lib ldd "$DEST/backends/python/triton_python_backend_stub" | grep "not found"; then
    echo "triton: missing shared libraries (above)" >&2
    exit 1
fi
echo "$WANT" >"$STAMP"
echo "triton: installed $WANT into $DEST ($(du -sh "$DEST" | cut -f1))"
