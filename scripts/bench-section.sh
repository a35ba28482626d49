#!/usr/bin/env bash
# Replaces (or appends) the "## NAME" section of BENCHMARKS.md with TEXT.
#   scripts/bench-section.sh NAME TEXT
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 text=$2
[[ -f BENCHMARKS.md ]] || printf '# Benchmarks\n\nEach section says the command that produced it. The machine is shared and noisy (2 cores): compare ratios measured side by side.\n' > BENCHMARKS.md
python3 - "$name" "$text" <<'PY'
import re, sys
name, text = sys.argv[1], sys.argv[2].rstrip() + "\n"
doc = open("BENCHMARKS.md").read()
pat = re.compile(r"^## " + re.escape(name) + r"\n.*?(?=^## |\Z)", re.S | re.M)
doc = pat.sub(lambda m: text + "\n", doc) if pat.search(doc) else doc.rstrip() + "\n\n" + text
open("BENCHMARKS.md", "w").write(doc)
PY
