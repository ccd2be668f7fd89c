#!/usr/bin/env bash
# Static checks of the built packages: lintian on the .deb (no error or warning without a
# written override), the .deb's files, conffiles and scripts; the .rpm's files, config
# files, requirements and scriptlets. Prints the package sizes.
#
#   tests/e2e/packages.sh target/packages/vllama_*.deb target/packages/vllama-*.rpm
set -uo pipefail
DEB=${1:?the .deb}
RPM=${2:?the .rpm}
PASS=0; FAIL=0
ok()  { PASS=$((PASS+1)); echo "  PASS  $*"; }
bad() { FAIL=$((FAIL+1)); echo "  FAIL  $*"; }
has_all() {  # has_all "what" "text" needle...
  local what=$1 text=$2; shift 2
  local missing=()
  for n in "$@"; do grep -qxF -- "$n" <<<"$text" || missing+=("$n"); done
  [ ${#missing[@]} = 0 ] && ok "$what" || bad "$what: missing ${missing[*]}"
}

echo "== .deb"
report=$(lintian --tag-display-limit 0 "$DEB" 2>&1 | grep -E '^[EW]: ')
[ -z "$report" ] && ok "lintian: no errors, no warnings" || bad "lintian:
$report"
files=$(dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's|^\./|/|')
has_all "deb carries binaries, units, sysusers, tmpfiles, config, man pages, completions, docs" "$files" \
  /usr/bin/vllamad /usr/bin/vllamactl /usr/lib/systemd/system/vllamad.service \
  /usr/lib/systemd/system/vllama-engine@.service /usr/lib/systemd/system/vllama.slice \
  /usr/share/polkit-1/rules.d/50-vllama.rules \
  /usr/lib/systemd/system/vllamad.socket /usr/lib/systemd/system/vllamad-admin.socket \
  /usr/lib/sysusers.d/vllama.conf /usr/lib/tmpfiles.d/vllama.conf /etc/vllama/vllama.toml \
  /usr/share/man/man8/vllamad.8.gz /usr/share/man/man1/vllamactl.1.gz \
  /usr/share/bash-completion/completions/vllamactl /usr/share/zsh/vendor-completions/_vllamactl \
  /usr/share/fish/vendor_completions.d/vllamactl.fish /usr/share/doc/vllama/copyright \
  /usr/share/doc/vllama/changelog.Debian.gz
ctl=$(mktemp -d); trap 'rm -rf "$ctl"' EXIT
dpkg-deb -e "$DEB" "$ctl"
[ "$(cat "$ctl/conffiles")" = /etc/vllama/vllama.toml ] && ok "conffile: /etc/vllama/vllama.toml" || bad "conffiles: $(cat "$ctl/conffiles")"
grep -q 'deb-systemd-invoke start $SOCKETS' "$ctl/postinst" && grep -q 'try-restart vllamad.service' "$ctl/postinst" \
  && ok "postinst starts the sockets, restarts a running daemon on upgrade" || bad "postinst"
grep -q 'deb-systemd-helper purge' "$ctl/postrm" && ok "postrm purges the enablement state" || bad "postrm"
gzip -dc "$(dirname "$DEB")/../packaging/man/vllamad.8.gz" 2>/dev/null | grep -q '^\.TH vllamad 8' && ok "vllamad(8) man page" || bad "man page"

echo "== .rpm"
files=$(rpm -qpl "$RPM" 2>/dev/null)
has_all "rpm carries binaries, units, sysusers, tmpfiles, config, man pages" "$files" \
  /usr/bin/vllamad /usr/bin/vllamactl /usr/lib/systemd/system/vllamad.service \
  /usr/lib/systemd/system/vllama-engine@.service /usr/lib/systemd/system/vllama.slice \
  /usr/share/polkit-1/rules.d/50-vllama.rules \
  /usr/lib/systemd/system/vllamad.socket /usr/lib/systemd/system/vllamad-admin.socket \
  /usr/lib/sysusers.d/vllama.conf /usr/lib/tmpfiles.d/vllama.conf /etc/vllama/vllama.toml \
  /usr/share/man/man8/vllamad.8.gz /usr/share/man/man1/vllamactl.1.gz
[ "$(rpm -qp --configfiles "$RPM" 2>/dev/null)" = /etc/vllama/vllama.toml ] && ok "config file: /etc/vllama/vllama.toml" || bad "configfiles"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM" 2>/dev/null | grep -q '^cn /etc/vllama/vllama.toml' \
  && ok "the config is %config(noreplace)" || bad "config not noreplace"
rpm -qp --requires "$RPM" 2>/dev/null | grep -q '^systemd >= 252' && ok "requires systemd >= 252" || bad "requires"
rpm -qp --requires "$RPM" 2>/dev/null | grep -q '^polkit' && ok "requires polkit (the engine units' rule)" || bad "no polkit requirement"
dpkg-deb -f "$DEB" Depends | grep -q 'polkitd' && ok "deb depends on polkitd" || bad "deb Depends: $(dpkg-deb -f "$DEB" Depends)"
scripts=$(rpm -qp --scripts "$RPM" 2>/dev/null)
for want in "systemd-sysusers vllama.conf" "enable vllamad.socket vllamad-admin.socket" \
            "disable --now vllamad.service vllamad.socket vllamad-admin.socket" "try-restart vllamad.service"; do
  grep -qF "$want" <<<"$scripts" && ok "scriptlets: $want" || bad "scriptlets lack: $want"
done

echo "== sizes"
for p in "$DEB" "$RPM"; do echo "  FIGURE: $(basename "$p"): $(stat -c %s "$p") bytes"; done
echo "== $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
