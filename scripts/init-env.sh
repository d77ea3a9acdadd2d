#!/usr/bin/env bash
# Creates an env file for docker compose from .env.example, with a fresh random secret in place of
# every `change-me`. Never overwrites: an existing file is left exactly as it is.
#
# Usage: scripts/init-env.sh [FILE] [KEY=VALUE ...]
#   FILE       the file to create (default: .env at the repository root)
#   KEY=VALUE  settings to set in the new file, e.g. API_PORT=18000 (replaces the KEY line, or the
#              commented-out `# KEY=` line, of the example; appended when the example has neither)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
example=$root/.env.example
target=${1:-$root/.env}
[[ $# -gt 0 ]] && shift

if [[ -e $target ]]; then
  echo "init-env: $target exists; leaving it as it is"
  exit 0
fi
[[ -r $example ]] || { echo "init-env: $example not found" >&2; exit 1; }
for pair in "$@"; do
  [[ $pair =~ ^[A-Z_][A-Z0-9_]*= ]] || { echo "init-env: not KEY=VALUE: $pair" >&2; exit 2; }
done

# 32 random bytes as hex: no character that needs quoting in a URL, a shell or a YAML file.
random_secret() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex 32
  else
    od -An -vtx1 -N32 /dev/urandom | tr -d ' \n'
  fi
}

umask 077 # the file holds secrets
tmp=$(mktemp "$target.XXXXXX")
trap 'rm -f "$tmp" "$tmp.new"' EXIT

secrets=0
while IFS= read -r line || [[ -n $line ]]; do
  if [[ $line =~ ^([A-Z_][A-Z0-9_]*)=change-me$ ]]; then
    line="${BASH_REMATCH[1]}=$(random_secret)"
    secrets=$((secrets + 1))
  fi
  printf '%s\n' "$line"
done <"$example" >"$tmp"

for pair in "$@"; do
  key=${pair%%=*}
  if grep -Eq "^(# )?$key=" "$tmp"; then
    # awk rather than sed: the value is taken literally, whatever characters it holds
    awk -v key="$key" -v pair="$pair" '
      !done && ($0 ~ "^" key "=" || $0 ~ "^# " key "=") { print pair; done = 1; next }
      { print }' "$tmp" >"$tmp.new"
    mv "$tmp.new" "$tmp"
  else
    printf '%s\n' "$pair" >>"$tmp"
  fi
done

# noclobber: if another process created the file meanwhile, fail instead of overwriting it
if ! (set -o noclobber && cat "$tmp" >"$target") 2>/dev/null; then
  echo "init-env: $target appeared meanwhile; leaving it as it is" >&2
  exit 1
fi
echo "init-env: wrote $target ($secrets random secrets${*:+; set $*})"
