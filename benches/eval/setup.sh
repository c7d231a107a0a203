#!/usr/bin/env bash
# Creates .venv-eval for `cargo bench --bench generation`: Pynguin and the corpus packages
# (pinned in benches/eval/requirements.txt). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=/usr/bin/python3
[ -x "$python" ] || python=python3
[ -x .venv-eval/bin/python ] || "$python" -m venv .venv-eval
.venv-eval/bin/python -m pip install --quiet --disable-pip-version-check -r benches/eval/requirements.txt
# Claude's tokenizer as Anthropic's SDK shipped it (anthropic 0.34.2, tokenizer.json), for
# the cost report's token counts; sha256-checked. Anthropic documents it as approximate
# for Claude 3 and later models, and no newer one is published.
tokenizer=benches/eval/claude-tokenizer.json
sum=c241737df24b4e7f7c9af4fdcee29a0ca903dcb288a8b753bc346a3092911767
if ! echo "$sum  $tokenizer" | sha256sum -c --quiet >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  .venv-eval/bin/python -m pip download --quiet --disable-pip-version-check --no-deps anthropic==0.34.2 -d "$tmp"
  .venv-eval/bin/python -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("anthropic/tokenizer.json"))' "$tmp"/anthropic-0.34.2-py3-none-any.whl "$tokenizer"
  rm -rf "$tmp"
  echo "$sum  $tokenizer" | sha256sum -c --quiet
fi
