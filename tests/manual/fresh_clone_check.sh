#!/usr/bin/env bash
# A new user's first minutes: clone main into a fresh folder and run the README's two set-up commands
# exactly as the README's first code block writes them, each in a clean environment (no venv active).
#   tests/manual/fresh_clone_check.sh [WORKDIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$(mktemp -d)}
git clone -q --branch main "$repo" "$work/dpiqa"
cd "$work/dpiqa"
# the first ```bash block of the README, comments dropped
mapfile -t commands < <(awk '/^```bash/{f=1;next} /^```/{if(f)exit} f' README.md | sed 's/#.*//; s/[[:space:]]*$//' | sed '/^$/d')
[ "${#commands[@]}" -eq 2 ] || { echo "expected two commands in the README's first block, got ${#commands[@]}"; exit 1; }
unset VIRTUAL_ENV PYTHONPATH
for c in "${commands[@]}"; do
  echo "+ $c   (in $work/dpiqa)"
  start=$(date +%s)
  env -i HOME="$HOME" PATH="/usr/local/bin:/usr/bin:/bin:$(dirname "$(command -v python3)")" bash -c "$c"
  echo "  ok in $(( $(date +%s) - start )) s"
done
echo "both README commands succeeded in a fresh clone at $work/dpiqa"
