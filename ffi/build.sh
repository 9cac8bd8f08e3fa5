#!/bin/sh
# Builds the native shim into build/libremora_shim.so (ignored by git).
set -e
cd "$(dirname "$0")/.."
mkdir -p build
if [ ! -f build/libremora_shim.so ] || [ ffi/shim.c -nt build/libremora_shim.so ]; then
  ${CC:-cc} -O2 -Wall -Wextra -fPIC -shared -pthread -o build/libremora_shim.so ffi/shim.c
fi
