#!/usr/bin/env bash
# Builds vllama's .deb and .rpm into target/packages/, reproducibly (SOURCE_DATE_EPOCH from
# the last commit): release binaries, man pages and completions from the clap definitions,
# then cargo-deb and cargo-generate-rpm (installed into /var/cache/vllama/cargo-tools when
# missing; a few minutes the first time).
#
#   packaging/build-packages.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${VLLAMA_CARGO_TOOLS:-${VLLAMA_CACHE_ROOT:-/var/cache/vllama}/cargo-tools}
mkdir -p "$tools" 2>/dev/null || true
[ -w "$tools" ] || { tools=${XDG_CACHE_HOME:-$HOME/.cache}/vllama/cargo-tools; mkdir -p "$tools"; }
export PATH="$tools/bin:$PATH"
for tool in cargo-deb:cargo-deb cargo-generate-rpm:cargo-generate-rpm; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    echo "== installing ${tool#*:} into $tools" >&2
    cargo install --locked --quiet --root "$tools" "${tool#*:}"
  fi
done

SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH

cargo build --release --locked -p vllamad -p vllamactl
out=target/packaging
rm -rf "$out" && mkdir -p "$out/man" "$out/completions"
for bin in vllamad vllamactl; do
  section=$([ "$bin" = vllamad ] && echo 8 || echo 1)
  "target/release/$bin" --generate man | gzip -9n > "$out/man/$bin.$section.gz"
  "target/release/$bin" --generate complete-bash > "$out/completions/$bin.bash"
  "target/release/$bin" --generate complete-zsh > "$out/completions/_$bin"
  "target/release/$bin" --generate complete-fish > "$out/completions/$bin.fish"
done
touch -d "@$SOURCE_DATE_EPOCH" "$out"/man/* "$out"/completions/*

mkdir -p target/packages
rm -f target/packages/vllama*.deb target/packages/vllama*.rpm
cargo deb -p vllamad --no-build --locked --output target/packages/ >&2
cargo generate-rpm -p daemon --output target/packages/ >&2
ls -1 target/packages/vllama*
