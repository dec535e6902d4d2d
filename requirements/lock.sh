#!/usr/bin/env bash
# Refresh the locks from pyproject.toml's floors: `bash requirements/lock.sh` (needs uv: `pip install uv`).
#
#   dev.txt   the tested set: every extra (the docs site's too), for the Python and platform CI runs (CPython 3.11, x86_64 Linux);
#             what the README's test command and .ci/run install.
#   edge.txt  a device's set ([edge] and [onnx]) for every platform the runtime supports (CPython 3.10-3.13,
#             x86_64 and aarch64 Linux); `pip install -r requirements/edge.txt` then the wheel with --no-deps.
#
# Every pin carries its hashes, so pip installs exactly these files. After a refresh run .ci/run: it installs
# from the new lock, and its second install (the newest versions the floors allow) shows what the next refresh
# will meet.
set -euo pipefail
cd "$(dirname "$0")/.."
compile=(uv pip compile pyproject.toml --generate-hashes --no-header --quiet
         --constraints requirements/constraints.txt)
"${compile[@]}" --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --extra train --extra edge --extra tools --extra dev --extra onnx --extra onnx-export --extra docs \
  -o requirements/dev.txt
"${compile[@]}" --universal --python-version 3.10 --extra edge --extra onnx -o requirements/edge.txt
echo "requirements/dev.txt and requirements/edge.txt written from pyproject.toml"
