#!/usr/bin/env bash
# vllama's package under a real systemd: boots a Debian rootfs (tests/e2e/rootfs.sh) with
# systemd-nspawn, installs the .deb, and checks what a user of `apt install vllama` gets:
# socket activation, READY, the admin socket's permissions, reload (good and broken
# config), the journal's fields, a restart under load without a refused connection, the
# watchdog, engines (the fake vLLM installed as `vllm`) as units of their own that outlive a
# restart, an upgrade and a crash of vllamad and go with its stop, DeviceAllow, upgrade,
# remove and purge. Then, given the .rpm, the same machine installs that (Debian's
# rpm, its scriptlets under the same systemd): sockets, first request, upgrade, erase.
# Prints PASS/FAIL per check and the figures; exits 1 on a FAIL.
#
#   sudo tests/e2e/nspawn.sh target/packages/vllama_*.deb target/release/fake-vllm [SUITE [RPM]]
set -uo pipefail
DEB=$(realpath "${1:?the .deb}")
FAKE=$(realpath "${2:?the fake-vllm binary}")
SUITE=${3:-bookworm}
RPM=${4:+$(realpath "$4")}
[ "$(id -u)" = 0 ] || { echo "needs root (systemd-nspawn)"; exit 2; }
cd "$(dirname "$0")/../.."

PASS=0; FAIL=0
ok()   { PASS=$((PASS+1)); echo "  PASS  $*"; }
bad()  { FAIL=$((FAIL+1)); echo "  FAIL  $*"; }
info() { echo "  ....  $*"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

TAR=$(bash tests/e2e/rootfs.sh "$SUITE") || exit 2
WORK=$(mktemp -d /var/tmp/vllama-e2e.XXXX)
ART=${VLLAMA_E2E_ARTIFACTS:-$WORK/artifacts}
mkdir -p "$WORK/root" "$WORK/pkgs" "$ART"
tar -C "$WORK/root" -xf "$TAR"
cp "$DEB" "$WORK/pkgs/vllama.deb"
# The same package with a newer version: an upgrade that must not reload a single model.
dpkg-deb -R "$DEB" "$WORK/next"
sed -i 's/^Version: \(.*\)$/Version: \1+e2e1/' "$WORK/next/DEBIAN/control"
dpkg-deb --root-owner-group -b "$WORK/next" "$WORK/pkgs/vllama-next.deb" >/dev/null
rm -rf "$WORK/next"
cp "$FAKE" "$WORK/pkgs/fake-vllm"
# The stand-in Python `engine install` runs (it links the fake engine beside it as bin/vllm).
cp "$(dirname "$FAKE")/fake-python" "$WORK/pkgs/fake-python"
[ -n "$RPM" ] && cp "$RPM" "$WORK/pkgs/vllama.rpm"

# Pure cgroup v2 and bpf() allowed in the container: DeviceAllow= is really enforced.
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -D "$WORK/root" --boot --register=no \
  --keep-unit --machine="vllama-e2e-$$" --console=read-only --private-network \
  --system-call-filter=bpf --bind-ro="$WORK/pkgs":/pkgs > "$ART/console.log" 2>&1 &
NSPID=$!
CPID=
cleanup() {
  if [ -n "$CPID" ] && kill -0 "$CPID" 2>/dev/null; then
    nsenter -t "$CPID" -a journalctl -b --no-pager -o short-monotonic > "$ART/journal.txt" 2>&1
    nsenter -t "$CPID" -a systemctl poweroff >/dev/null 2>&1
  fi
  for _ in $(seq 100); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$NSPID" 2>/dev/null
  wait "$NSPID" 2>/dev/null
  rm -rf "$WORK/root" "$WORK/pkgs"
  # Artifacts (journal, console, install log) are kept when something failed or were asked for.
  [ "$FAIL" = 0 ] && [ -z "${VLLAMA_E2E_ARTIFACTS:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT

state=
for _ in $(seq 600); do
  kill -0 "$NSPID" 2>/dev/null || { echo "systemd-nspawn exited:"; tail -20 "$ART/console.log"; exit 1; }
  CPID=$(pgrep -P "$NSPID" | head -1)
  if [ -n "$CPID" ]; then
    state=$(nsenter -t "$CPID" -a systemctl is-system-running 2>/dev/null)
    case "$state" in running|degraded) break ;; esac
  fi
  sleep 0.1
done
IN="nsenter -t $CPID -a"
info "booted: $($IN systemctl --version | head -1), state $state"

api() { $IN curl -sS -m 10 -H 'Host: localhost' "http://127.0.0.1:11434$1" "${@:2}"; }
show() { $IN systemctl show -p "$1" --value vllamad.service; }

echo "== install"
t0=$(now_ms)
$IN sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i /pkgs/vllama.deb' > "$ART/install.log" 2>&1 \
  && ok "dpkg -i (maintainer scripts under real systemd)" || { bad "dpkg -i"; cat "$ART/install.log"; exit 1; }
$IN getent passwd vllama >/dev/null && $IN getent group vllama-admin >/dev/null \
  && ok "user vllama and group vllama-admin exist" || bad "sysusers did not run"
for s in vllamad.socket vllamad-admin.socket; do
  [ "$($IN systemctl is-enabled $s)" = enabled ] && [ "$($IN systemctl is-active $s)" = active ] \
    && ok "$s enabled and listening" || bad "$s: $($IN systemctl is-enabled $s) $($IN systemctl is-active $s)"
done
[ "$($IN systemctl is-active vllamad.service)" = inactive ] && ok "vllamad.service not started yet (socket-activated)" || bad "service already running"
out=$(api /api/version) && t1=$(now_ms) && echo "$out" | grep -q '"version"' \
  && ok "first request starts it: $out" || bad "first request: $out"
info "FIGURE: dpkg -i to first answered request: $((t1 - t0)) ms"
grep -q "next step: sudo vllamactl engine install" "$ART/install.log" \
  && ok "dpkg -i names the next step (engine install)" || bad "no next-step notice: $(cat "$ART/install.log")"
[ "$(show ActiveState)" = active ] && ok "service active" || bad "service $(show ActiveState)"
status_text=$(show StatusText)
echo "$status_text" | grep -q "serving on" && ok "READY=1 and STATUS= reached PID 1: '$status_text'" || bad "StatusText '$status_text'"
out=$($IN systemd-analyze verify --man=no vllamad.service vllamad.socket vllamad-admin.socket vllama-engine@e2e.service vllama.slice 2>&1)
[ -z "$out" ] && ok "systemd-analyze verify: silent" || bad "systemd-analyze verify: $out"
exposure=$($IN systemd-analyze security --no-pager vllamad.service 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
awk "BEGIN{exit !($exposure <= 1.6)}" && ok "exposure $exposure <= 1.6" || bad "exposure $exposure"
info "FIGURE: systemd-analyze security exposure $exposure"
exposure=$($IN systemd-analyze security --no-pager vllama-engine@e2e.service 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
awk "BEGIN{exit !($exposure <= 1.6)}" && ok "engine unit exposure $exposure <= 1.6 (vllamad's sandbox)" || bad "engine unit exposure $exposure"
# The sandbox's AF_NETLINK is what keeps the exposure at 1.6 rather than 1.5: getifaddrs()
# asks the kernel over netlink, and NCCL finds its bootstrap interface with it (tensor
# parallel engines). Shown here with hostname -I, which lists addresses the same way.
with=$($IN systemd-run --wait --pipe --quiet -p RestrictAddressFamilies="AF_UNIX AF_INET AF_INET6 AF_NETLINK" hostname -I >/dev/null 2>&1; echo $?)
without=$($IN systemd-run --wait --pipe --quiet -p RestrictAddressFamilies="AF_UNIX AF_INET AF_INET6" hostname -I 2>&1 >/dev/null; echo "rc=$?")
[ "$with" = 0 ] && [ "${without##*rc=}" != 0 ] && ok "getifaddrs needs AF_NETLINK (without it: ${without//$'\n'/ })" \
  || bad "getifaddrs with AF_NETLINK: rc $with; without: $without"

echo "== admin socket"
$IN vllamactl status > "$ART/status-root.txt" 2>&1 && ok "vllamactl status as root" || bad "vllamactl status as root: $(cat "$ART/status-root.txt")"
out=$($IN setpriv --reuid=65534 --regid=65534 --clear-groups vllamactl status 2>&1)
[ $? = 3 ] && echo "$out" | grep -qi "permission denied" && ok "refused to nobody (EACCES): ${out:0:70}" || bad "nobody: $out"
$IN useradd -M -G vllama alice 2>/dev/null
out=$($IN setpriv --reuid=alice --regid=alice --init-groups vllamactl status 2>&1) \
  && ok "a member of group vllama can read the status" || bad "member of vllama: $out"
out=$($IN setpriv --reuid=alice --regid=alice --init-groups vllamactl reload 2>&1)
echo "$out" | grep -q "vllama-admin" && ok "...but not reload (needs vllama-admin)" || bad "alice reload: $out"

echo "== reload"
pid=$(show MainPID)
$IN sed -i 's/^#filter = "info"/filter = "debug"/' /etc/vllama/vllama.toml
$IN systemctl reload vllamad && ok "systemctl reload (good config)" || bad "reload failed"
[ "$(show MainPID)" = "$pid" ] && ok "same MainPID after reload" || bad "MainPID changed"
$IN vllamactl status | grep -q "generation 2" && ok "generation 2 in force" || bad "$($IN vllamactl status | grep config)"
$IN cp /etc/vllama/vllama.toml /root/good.toml
$IN sed -i 's/^\[daemon\]$/[daemon]\nnot_a_key = 1/' /etc/vllama/vllama.toml
$IN systemctl reload vllamad 2>/dev/null && bad "reload of a broken config succeeded" || ok "systemctl reload fails on a broken config"
out=$(api /api/version) && ok "still serving after the refused reload" || bad "not serving: $out"
$IN journalctl -u vllamad -o cat --no-pager | grep -q "reload refused" && ok "the journal says why" || bad "no reason in the journal"
$IN cp /root/good.toml /etc/vllama/vllama.toml
$IN systemctl reload vllamad || bad "reload back"

echo "== journal"
api /api/version -H 'X-Request-Id: e2e-journal-1' >/dev/null
sleep 0.3
$IN journalctl -u vllamad -o json --no-pager > "$ART/journal.json"
grep -q '"REQUEST_ID":"e2e-journal-1"' "$ART/journal.json" && ok "REQUEST_ID field on the access line" || bad "no REQUEST_ID"
grep -q '"SYSLOG_IDENTIFIER":"vllamad"' "$ART/journal.json" && grep -q '"LISTENER":"api"' "$ART/journal.json" \
  && ok "SYSLOG_IDENTIFIER=vllamad, LISTENER=api" || bad "fields missing"
grep '"REQUEST_ID":"e2e-journal-1"' "$ART/journal.json" | grep -q '"TARGET":"vllamad::access"' \
  && ok "the access line is TARGET=vllamad::access (journalctl TARGET=vllamad::access)" || bad "no TARGET on the access line"

echo "== restart under load"
# A client loop (a new connection per request); the restart is issued once 100 requests
# have been answered, and must end before the loop does.
$IN sh -c 'ok=0; fail=0; for i in $(seq 1500); do if curl -s -m 10 -o /dev/null -H "Host: localhost" http://127.0.0.1:11434/api/version; then ok=$((ok+1)); else fail=$((fail+1)); fi; [ $i = 100 ] && touch /root/load.100; done; echo "$ok $fail $(date +%s%N)" > /root/load.txt' &
LOAD=$!
for _ in $(seq 200); do $IN test -e /root/load.100 && break; sleep 0.05; done
pid=$(show MainPID)
$IN systemctl restart vllamad.service
restarted=$(date +%s%N)
wait $LOAD
read -r good failed ended < <($IN cat /root/load.txt)
[ "$(show MainPID)" != "$pid" ] && [ "${ended:-0}" -gt "$restarted" ] && ok "the restart happened inside the client loop" || bad "the loop did not overlap the restart"
[ "${failed:-1}" = 0 ] && ok "restart under load: $good requests, 0 refused" || bad "restart under load: $failed of $((good + failed)) failed"
info "FIGURE: connection failures during restart: ${failed:-?} of $((good + failed))"

echo "== watchdog"
$IN mkdir -p /run/systemd/system/vllamad.service.d
$IN sh -c 'printf "[Service]\nWatchdogSec=2s\nEnvironment=VLLAMA_TEST_HOOKS=1\n" > /run/systemd/system/vllamad.service.d/e2e-watchdog.conf'
$IN systemctl daemon-reload; $IN systemctl restart vllamad
n0=$(show NRestarts); t=$(now_ms)
$IN systemctl kill -s USR2 --kill-who=main vllamad
for _ in $(seq 100); do [ "$(show NRestarts)" -gt "$n0" ] && break; sleep 0.1; done
[ "$(show NRestarts)" -gt "$n0" ] && ok "a hung daemon is restarted by the watchdog ($(( $(now_ms) - t )) ms)" || bad "no watchdog restart"
seen=
for _ in $(seq 30); do $IN journalctl -u vllamad -o cat --no-pager | grep -q "Watchdog timeout" && seen=1 && break; sleep 0.1; done
[ -n "$seen" ] && ok "journal: Watchdog timeout" || bad "no watchdog line"
$IN rm -rf /run/systemd/system/vllamad.service.d; $IN systemctl daemon-reload; $IN systemctl reset-failed vllamad

echo "== doctor and engine install, as the daemon's user inside its sandbox"
out=$($IN vllamactl doctor 2>&1); rc=$?
[ $rc = 1 ] && echo "$out" | grep -q "✗ engine" && echo "$out" | grep -q "fix: sudo vllamactl engine install" \
  && ok "doctor without an engine: ✗ engine with its fix, exit 1" || bad "doctor without an engine (rc $rc): $out"
echo "$out" | grep -q "✓ public port.*answers as vllama; held by systemd" \
  && ok "doctor: the public port is vllama's, held by systemd" || bad "doctor port: $out"
# As an operator edits the shipped file: uncomment the key (an [engine] table exists).
$IN sed -i 's|^#python = "python3"|python = "/pkgs/fake-python"|' /etc/vllama/vllama.toml
$IN vllamactl reload >/dev/null 2>&1 && ok "reload with engine.python set" || bad "reload with engine.python: $($IN vllamactl reload 2>&1)"
out=$($IN vllamactl engine install --cpu 2>&1) && echo "$out" | grep -q "installed vLLM 0.32.0+fake" \
  && ok "engine install --cpu by the sandboxed daemon: $(echo "$out" | head -1)" || bad "engine install: $out"
owner=$($IN stat -c %U /var/lib/vllama/venv.d)
[ "$($IN readlink /var/lib/vllama/venv)" != "" ] && [ "$owner" = vllama ] \
  && ok "venv is a link to a build owned by vllama" || bad "venv: $($IN ls -la /var/lib/vllama) owner $owner"
out=$($IN vllamactl doctor 2>&1)
echo "$out" | grep -q "✓ engine" && ok "doctor with the engine installed: ✓ engine" || bad "doctor with an engine: $out"
echo "$out" | grep -q "✓ engines.*systemd units" && ok "doctor: ✓ engines as systemd units (polkit installed)" || bad "doctor engines: $out"
echo "$out" > "$ART/doctor.txt"

echo "== an engine, and nothing left after stop"
$IN install -D -m 755 /pkgs/fake-vllm /var/lib/vllama/venv/bin/vllm
$IN mkdir -p /var/lib/vllama/models/tiny
$IN sh -c 'echo "{\"model_type\":\"llama\"}" > /var/lib/vllama/models/tiny/config.json; chown -R vllama:vllama /var/lib/vllama'
$IN sh -c 'printf "[models.\"tiny\"]\nsource = \"/var/lib/vllama/models/tiny\"\nenv = { FAKE_VLLM_GRANDCHILD = \"1\", FAKE_VLLM_TOKEN_MS = \"50\", FAKE_VLLM_STATE_DIR = \"/var/lib/vllama/fake-tiny\" }\n" >> /etc/vllama/vllama.toml'
# Two engines at once on the CPU (host memory alone would hold one: the fake's KV cache size
# is unknown).
$IN sed -i 's/^#max_loaded = 0/max_loaded = 3/' /etc/vllama/vllama.toml
# A second model, with limits for its unit (it stays the file's last table: the flags
# change below appends to it).
$IN sh -c 'printf "[models.\"tiny2\"]\nsource = \"/var/lib/vllama/models/tiny\"\nmemory_max = \"2G\"\ncpu_weight = 50\nenv = { FAKE_VLLM_STATE_DIR = \"/var/lib/vllama/fake-tiny2\" }\n" >> /etc/vllama/vllama.toml'
$IN systemctl restart vllamad
out=$(api /api/chat -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":4}}')
echo "$out" | grep -q '"done":true' && ok "chat through an engine under systemd" || bad "chat: $out"

echo "== API keys under the sandbox"
key=$($IN vllamactl key add e2e 2>/dev/null)
[ "${key:0:3}" = vk- ] && ok "vllamactl key add: the sandboxed daemon wrote its keys file" || bad "key add: $key"
[ "$($IN stat -c '%U %a' /var/lib/vllama/api-keys.toml 2>/dev/null)" = "vllama 600" ] \
  && ok "api-keys.toml is vllama's, mode 600" || bad "keys file: $($IN stat -c '%U %a' /var/lib/vllama/api-keys.toml 2>&1)"
code=$($IN curl -s -o /dev/null -w '%{http_code}' -H 'Host: localhost' http://127.0.0.1:11434/api/tags)
[ "$code" = 401 ] && ok "without a key: 401" || bad "without a key: $code"
$IN systemctl restart vllamad
out=$(api /api/chat -H "Authorization: Bearer $key" -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":2}}')
echo "$out" | grep -q '"done":true' && ok "with the key, after a restart: served" || bad "with the key: $out"
for _ in $(seq 20); do  # journald writes the entry a moment after the answer
  $IN journalctl -u vllamad -o json --no-pager > "$ART/journal-keys.json"
  grep '"KEY_NAME":"e2e"' "$ART/journal-keys.json" | grep -q '"TARGET":"vllamad::access"' && break
  sleep 0.1
done
grep '"KEY_NAME":"e2e"' "$ART/journal-keys.json" | grep -q '"TARGET":"vllamad::access"' \
  && ok "the access line names the key (KEY_NAME=e2e)" || bad "no KEY_NAME on the access line"
$IN vllamactl key rm e2e >/dev/null 2>&1 && out=$(api /api/version) && code=$($IN curl -s -o /dev/null -w '%{http_code}' -H 'Host: localhost' http://127.0.0.1:11434/api/tags) \
  && [ "$code" = 200 ] && ok "vllamactl key rm: open again (loopback)" || bad "after key rm: $code"
# Keys provisioned from outside: the api-keys credential, from systemd's credential store.
secret=vk-provisioned-e2e
sha=$(printf %s "$secret" | sha256sum | cut -d' ' -f1)
$IN systemctl reset-failed vllamad.service  # restarts in a row count against the start limit
$IN sh -c "install -d -m 0700 /etc/credstore && printf '[[key]]\nid = \"key_ops\"\nname = \"ops\"\nsha256 = \"$sha\"\n' > /etc/credstore/api-keys && chmod 600 /etc/credstore/api-keys"
$IN systemctl restart vllamad
code=$($IN curl -s -o /dev/null -w '%{http_code}' -H 'Host: localhost' http://127.0.0.1:11434/api/tags)
code_key=$($IN curl -s -o /dev/null -w '%{http_code}' -H 'Host: localhost' -H "Authorization: Bearer $secret" http://127.0.0.1:11434/api/tags)
[ "$code" = 401 ] && [ "$code_key" = 200 ] && ok "a key in /etc/credstore/api-keys (LoadCredential=api-keys): 401 without, 200 with" \
  || bad "credential key: $code without, $code_key with"
$IN vllamactl key list | grep -q "ops (credential)" && ok "vllamactl key list marks it (credential)" || bad "key list: $($IN vllamactl key list 2>&1)"
out=$($IN vllamactl key rm ops 2>&1); [ $? != 0 ] && echo "$out" | grep -q credstore \
  && ok "key rm of a credential key is refused, naming the file" || bad "key rm ops: $out"
$IN rm /etc/credstore/api-keys
$IN systemctl restart vllamad && [ "$(show ActiveState)" = active ] \
  && ok "without the credential's file the service starts (systemd $($IN systemctl --version | head -1 | cut -d' ' -f2))" || bad "start without /etc/credstore/api-keys: $(show ActiveState)"

echo "== kill -9 of vllamad with a stream open"
starts() { $IN sh -c "cat /var/lib/vllama/fake-$1/starts.log 2>/dev/null | wc -l"; }
kill_starts=$(starts tiny)
old_engines=$($IN pgrep -u vllama -f "serve|sleep" | tr '\n' ' ')
$IN sh -c 'curl -sS -N -m 30 -H "Host: localhost" http://127.0.0.1:11434/api/chat -d "{\"model\":\"tiny\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"options\":{\"num_predict\":400}}" > /tmp/stream.out 2>&1; echo "curl rc=$?" >> /tmp/stream.out' &
STREAM=$!
sleep 1
n0=$(show NRestarts); t=$(now_ms)
$IN systemctl kill -s KILL --kill-who=main vllamad
for _ in $(seq 100); do kill -0 "$STREAM" 2>/dev/null || break; sleep 0.1; done
kill -0 "$STREAM" 2>/dev/null && bad "the client's stream did not end within 10 s of the kill" \
  || ok "the client's stream ended $(( $(now_ms) - t )) ms after the kill ($($IN tail -c 60 /tmp/stream.out | tr '\n' ' '))"
for _ in $(seq 150); do [ "$(show NRestarts)" -gt "$n0" ] && [ "$(show ActiveState)" = active ] && break; sleep 0.1; done
[ "$(show NRestarts)" -gt "$n0" ] && ok "systemd restarted vllamad ($(( $(now_ms) - t )) ms)" || bad "no restart after kill -9 ($(show ActiveState))"
gone=""
for p in $old_engines; do $IN kill -0 "$p" 2>/dev/null || gone="$gone $p"; done
[ -z "$gone" ] && ok "the engine outlived the killed vllamad (${old_engines% })" || bad "engine processes gone with the killed vllamad:$gone"
out=$(api /api/chat -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"stream":false,"options":{"num_predict":4}}')
echo "$out" | grep -q '"done":true' && ok "the next request is served" || bad "after the restart: $out"
[ "$(starts tiny)" = "$kill_starts" ] && ok "...by the adopted engine: no engine start ($kill_starts so far)" || bad "the engine was started again: $kill_starts -> $(starts tiny)"
[ "$($IN journalctl -u vllamad -o cat --no-pager | grep -c "adopting the engine")" -gt 0 ] && ok "journal: adopting the engine an earlier vllamad left running" || bad "no adoption in the journal"
# The kill was a crash: it counts against the unit's start limit (5 starts in 10 s), and the
# steps below restart the service several times within seconds. An operator who killed it
# on purpose does the same.
$IN systemctl reset-failed vllamad.service vllamad.socket vllamad-admin.socket
echo "== engines outlive vllamad: units of their own"
chat() { api /api/generate -d "{\"model\":\"$1\",\"prompt\":\"hi\",\"stream\":false,\"options\":{\"num_predict\":1}}"; }
epid() { $IN sh -c "tail -1 /var/lib/vllama/fake-$1/starts.log 2>/dev/null"; }
chat tiny2 | grep -q '"done":true' && ok "a second model served" || bad "tiny2: $(chat tiny2)"
units=$($IN systemctl list-units --plain --no-legend --state=active 'vllama-engine@*' | awk '{print $1}')
[ "$(echo "$units" | grep -c .)" = 2 ] && ok "two engine units: $(echo $units)" || bad "engine units: $units"
u2=$(echo "$units" | grep tiny2)
[ "$($IN systemctl show -p Slice --value "$u2")" = vllama.slice ] && [ "$($IN systemctl show -p User --value "$u2")" = vllama ] \
  && ok "in vllama.slice, as user vllama" || bad "slice/user: $($IN systemctl show -p Slice -p User "$u2")"
[ "$($IN systemctl show -p MemoryMax --value "$u2")" = 2147483648 ] && [ "$($IN systemctl show -p CPUWeight --value "$u2")" = 50 ] \
  && ok "memory_max = 2G, cpu_weight = 50 → MemoryMax=2147483648, CPUWeight=50" || bad "limits: $($IN systemctl show -p MemoryMax -p CPUWeight "$u2")"
mem=$($IN systemctl show -p MemoryCurrent --value "$u2")
if $IN grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
  [ "${mem:-0}" -gt 0 ] 2>/dev/null && ok "memory accounted per engine: $((mem / 1024)) KiB" || bad "MemoryCurrent: $mem"
else
  info "no memory controller in this container (MemoryCurrent $mem): MemoryMax= is recorded, not enforced here"
fi
engine_lines() { $IN journalctl -u "$u2" -o json --no-pager | grep -c '"MODEL":"tiny2:latest"'; }
for _ in $(seq 20); do [ "$(engine_lines)" -gt 0 ] && break; sleep 0.1; done
[ "$(engine_lines)" -gt 0 ] \
  && ok "journalctl -u $u2: the engine's lines, MODEL=tiny2:latest" || bad "no engine lines in the unit's journal"
out=$($IN runuser -u vllama -- systemctl --no-ask-password stop vllamad-admin.socket 2>&1)
[ $? != 0 ] && [ "$($IN systemctl is-active vllamad-admin.socket)" = active ] && ok "polkit: vllama may not stop another unit (${out%%$'\n'*})" || bad "vllama stopped vllamad-admin.socket"
out=$($IN runuser -u vllama -- systemd-run --no-ask-password -p User=root /bin/true 2>&1)
[ $? != 0 ] && ok "polkit: nor create a transient unit" || bad "vllama created a transient unit: $out"
$IN runuser -u vllama -- systemctl --no-ask-password set-property --runtime "$u2" CPUWeight=50 \
  && ok "polkit: but may set its engines' limits" || bad "set-property on $u2 refused"

# Restarts with a client loop running (two models, alternately): no refused connection,
# the same engine processes, no engine start; the time to the first answer after each.
p1=$(epid tiny); p2=$(epid tiny2); s1=$(starts tiny); s2=$(starts tiny2)
loop_start() {  # a client asking both models in turn, until loop_end
  $IN rm -f /root/stop.loop /root/loop.txt
  $IN sh -c 'ok=0; fail=0; while [ ! -e /root/stop.loop ]; do for m in tiny tiny2; do if curl -sf -m 20 -o /dev/null -H "Host: localhost" http://127.0.0.1:11434/api/generate -d "{\"model\":\"$m\",\"prompt\":\"hi\",\"stream\":false,\"options\":{\"num_predict\":1}}"; then ok=$((ok+1)); else fail=$((fail+1)); fi; done; done; echo "$ok $fail" > /root/loop.txt' &
  LOOP=$!
}
loop_end() { $IN touch /root/stop.loop; wait $LOOP; read -r good failed < <($IN cat /root/loop.txt); }
loop_start
first_answer() {  # ms from `systemctl restart vllamad` to the first answered request
  $IN systemctl reset-failed vllamad.service
  local t; t=$(now_ms)
  $IN systemctl restart vllamad
  for _ in $(seq 300); do chat tiny2 | grep -q '"done":true' && break; sleep 0.01; done
  echo $(( $(now_ms) - t ))
}
median() { tr ' ' '\n' | grep . | sort -n | sed -n 3p; }
kept=""
for _ in 1 2 3 4 5; do kept="$kept $(first_answer)"; sleep 0.3; done
loop_end
[ "${failed:-1}" = 0 ] && [ "${good:-0}" -gt 10 ] && ok "5 restarts under a client loop: $good requests, 0 failed" || bad "restarts under load: ${failed:-?} of $((good + failed)) failed"
[ "$(epid tiny)" = "$p1" ] && [ "$(epid tiny2)" = "$p2" ] && $IN kill -0 "$p1" && $IN kill -0 "$p2" \
  && ok "both engine processes unchanged (pids $p1, $p2)" || bad "engine pids: $p1 $p2 -> $(epid tiny) $(epid tiny2)"
[ "$(starts tiny)" = "$s1" ] && [ "$(starts tiny2)" = "$s2" ] && ok "no engine start across the restarts" || bad "engine starts: $s1 $s2 -> $(starts tiny) $(starts tiny2)"
info "FIGURE: systemctl restart vllamad to the first answer, engines kept (ms):$kept; median $(echo "$kept" | median)"

# The same with engines that die with vllamad (children: the earlier behaviour).
$IN mkdir -p /run/systemd/system/vllamad.service.d
$IN sh -c 'printf "[Service]\nEnvironment=VLLAMA_ENGINE_LAUNCH=process\n" > /run/systemd/system/vllamad.service.d/e2e-process.conf'
$IN systemctl daemon-reload; $IN systemctl reset-failed vllamad.service; $IN systemctl restart vllamad
[ -z "$($IN systemctl list-units --plain --no-legend --state=active 'vllama-engine@*')" ] \
  && ok "engine.launch = process: the engine units left from before are stopped" || bad "units left: $($IN systemctl list-units --plain --no-legend 'vllama-engine@*')"
chat tiny2 >/dev/null
lost=""
for _ in 1 2 3 4 5; do lost="$lost $(first_answer)"; sleep 0.3; done
info "FIGURE: systemctl restart vllamad to the first answer, engines killed (ms):$lost; median $(echo "$lost" | median)"
[ "$(echo "$kept" | median)" -lt "$(echo "$lost" | median)" ] && ok "kept engines answer sooner after a restart ($(echo "$kept" | median) ms against $(echo "$lost" | median) ms)" || bad "kept $(echo "$kept" | median) ms, killed $(echo "$lost" | median) ms"
$IN rm -rf /run/systemd/system/vllamad.service.d; $IN systemctl daemon-reload; $IN systemctl reset-failed vllamad.service
$IN systemctl restart vllamad
chat tiny | grep -q '"done":true' && chat tiny2 | grep -q '"done":true' && ok "engines are units again" || bad "after going back to units"

# An upgrade (the same package, a newer version): postinst's try-restart keeps the engines.
p1=$(epid tiny); p2=$(epid tiny2); s1=$(starts tiny); s2=$(starts tiny2); pid=$(show MainPID)
$IN systemctl reset-failed vllamad.service vllamad.socket vllamad-admin.socket
loop_start; sleep 0.5
$IN sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i /pkgs/vllama-next.deb' >> "$ART/install.log" 2>&1 \
  && ok "dpkg -i of a newer version ($($IN dpkg-query -W -f '${Version}' vllama))" || bad "dpkg -i vllama-next.deb"
sleep 0.5; loop_end
[ "${failed:-1}" = 0 ] && [ "${good:-0}" -gt 2 ] && ok "the upgrade under a client loop: $good requests, 0 failed" || bad "upgrade under load: ${failed:-?} of $((good + failed)) failed"
[ "$(show MainPID)" != "$pid" ] && [ "$(show ActiveState)" = active ] && ok "the daemon was restarted on the new binary" || bad "daemon: $pid -> $(show MainPID) $(show ActiveState)"
chat tiny | grep -q '"done":true' && chat tiny2 | grep -q '"done":true' && ok "both models answer after the upgrade" || bad "after the upgrade"
[ "$(epid tiny)" = "$p1" ] && [ "$(epid tiny2)" = "$p2" ] && [ "$(starts tiny)" = "$s1" ] && [ "$(starts tiny2)" = "$s2" ] \
  && ok "the upgrade reloaded no model (pids $p1, $p2; no start)" || bad "upgrade: pids $p1 $p2 -> $(epid tiny) $(epid tiny2), starts $s1 $s2 -> $(starts tiny) $(starts tiny2)"

# A reload that changes one model's flags: that engine restarts once, the other not.
$IN sh -c 'printf "args = [\"--seed\", \"7\"]\n" >> /etc/vllama/vllama.toml'
$IN vllamactl reload >/dev/null 2>&1 || bad "reload with tiny2's new flags: $($IN vllamactl reload 2>&1)"
for _ in $(seq 100); do [ "$(starts tiny2)" -gt "$s2" ] && chat tiny2 | grep -q '"done":true' && break; sleep 0.1; done
[ "$(starts tiny2)" = $((s2 + 1)) ] && [ "$(epid tiny2)" != "$p2" ] && ok "tiny2's flags changed: its engine restarted once" || bad "tiny2: starts $s2 -> $(starts tiny2)"
$IN grep -q -- '"--seed"' "/run/vllama/engines/$(basename "$u2" .service | cut -d@ -f2).json" && ok "...with the new flags" || bad "tiny2's record lacks --seed"
[ "$(starts tiny)" = "$s1" ] && [ "$(epid tiny)" = "$p1" ] && ok "tiny untouched" || bad "tiny: $s1 -> $(starts tiny)"

# An engine that dies in its unit: vllamad sees it end (a pidfd on the unit's main process),
# says why, and the next request starts it again.
p2=$(epid tiny2); s2=$(starts tiny2)
$IN kill -9 "$p2"
for _ in $(seq 50); do [ "$($IN journalctl -u vllamad -o json --all --no-pager | grep -c 'signal: 9 (SIGKILL); unit vllama-engine@')" -gt 0 ] && break; sleep 0.1; done
[ "$($IN journalctl -u vllamad -o json --all --no-pager | grep -c 'signal: 9 (SIGKILL); unit vllama-engine@')" -gt 0 ] \
  && ok "an engine killed in its unit is reported: $($IN journalctl -u vllamad -o json --all --no-pager | grep -o 'exited unexpectedly (signal: 9 (SIGKILL); unit vllama-engine@[^)]*)' | tail -1)" || bad "the engine's death was not seen"
chat tiny2 | grep -q '"done":true' && [ "$(starts tiny2)" = $((s2 + 1)) ] && ok "...and started again by the next request" || bad "after the engine's death: starts $s2 -> $(starts tiny2)"

# An engine whose unit ends while no vllamad runs: the next vllamad cleans its record and
# starts it anew on the next request.
s2=$(starts tiny2)
$IN systemctl kill -s KILL --kill-who=main vllamad
$IN systemctl stop "$u2"
id2=$(basename "$u2" .service | cut -d@ -f2)
for _ in $(seq 100); do [ "$(show ActiveState)" = active ] && break; sleep 0.05; done
for _ in $(seq 40); do $IN test -e "/run/vllama/engines/$id2.json" || break; sleep 0.05; done
$IN test -e "/run/vllama/engines/$id2.json" && bad "the dead engine's record is still there" \
  || ok "an engine that ended while no vllamad ran: its record cleaned"
chat tiny2 | grep -q '"done":true' && [ "$(starts tiny2)" = $((s2 + 1)) ] && ok "...and the next request starts it anew" || bad "tiny2 after its unit ended: starts $s2 -> $(starts tiny2)"
$IN systemctl reset-failed vllamad.service

# vllamad, the engine and its grandchild: else "nothing left after stop" would prove nothing.
n=$($IN pgrep -u vllama -c -f . 2>/dev/null)
[ "${n:-0}" -ge 3 ] && ok "$n processes of user vllama while serving" || bad "only ${n:-0} processes of user vllama while serving"
$IN systemctl stop vllamad.service
left=$($IN pgrep -u vllama -a -f . 2>/dev/null)
[ -z "$left" ] && ok "systemctl stop leaves no process behind" || bad "left behind: $left"
[ -z "$($IN systemctl list-units --plain --no-legend --state=active,activating,deactivating 'vllama-engine@*')" ]   && ok "...and no engine unit" || bad "engine units after stop: $($IN systemctl list-units --plain --no-legend 'vllama-engine@*')"

# Without a driver, /proc/devices names no nvidia major, so `char-nvidia*` matches nothing
# here: the explicit /dev/nvidiactl rule is what lets the fake node through. (On a GPU host
# the driver registers "nvidia", "nvidiactl", "nvidia-uvm"…: tests/gpu/results.)
echo "== DeviceAllow (fake /dev/nvidia* nodes: ENXIO = let through, EPERM = blocked)"
$IN sh -c 'mknod -m 666 /dev/nvidia0 c 195 0; mknod -m 666 /dev/nvidiactl c 195 255; mknod -m 666 /dev/e2e-other c 10 200' 2>/dev/null
$IN mkdir -p /run/systemd/system/vllamad.service.d
$IN sh -c 'cat > /run/systemd/system/vllamad.service.d/e2e-dev.conf' <<'UNIT'
[Service]
ExecStartPost=/bin/sh -c 'for d in /dev/nvidia0 /dev/nvidiactl /dev/e2e-other; do m=$$( (exec 3<>$$d) 2>&1 ); echo "devprobe $$d: $${m:-opened}"; done'
UNIT
$IN systemctl daemon-reload; $IN systemctl start vllamad; sleep 0.3
probes=$($IN journalctl -u vllamad -o cat --no-pager | grep devprobe | tail -3)
echo "$probes" | sed 's/^/        /'
echo "$probes" | grep "nvidiactl" | grep -q "No such device" && ok "/dev/nvidiactl let through by the device cgroup" || bad "/dev/nvidiactl blocked"
$IN systemctl show -p DeviceAllow --value vllamad | grep -q "char-nvidia\*" && ok "char-nvidia* in DeviceAllow" || bad "no char-nvidia* rule"
echo "$probes" | grep "e2e-other" | grep -q "not permitted" && ok "another device blocked (DevicePolicy=closed)" || bad "other device not blocked"
$IN rm -rf /run/systemd/system/vllamad.service.d; $IN systemctl daemon-reload

echo "== upgrade, remove, purge"
api /api/version >/dev/null
pid=$(show MainPID)
# postinst restarts the sockets one at a time and then the service: three starts within
# the unit's start limit, which the steps above have used up.
$IN systemctl reset-failed vllamad.service vllamad.socket vllamad-admin.socket
$IN sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i /pkgs/vllama.deb' >> "$ART/install.log" 2>&1 && ok "upgrade (reinstall of the older version)" || bad "upgrade"
[ "$(show MainPID)" != "$pid" ] && [ "$(show ActiveState)" = active ] && ok "the running daemon was restarted" || bad "daemon not restarted: $pid -> $(show MainPID) $(show ActiveState)"
$IN grep -q "tiny" /etc/vllama/vllama.toml && ok "the edited conffile was kept" || bad "conffile replaced"
out=$(api /api/generate -d '{"model":"tiny2","prompt":"hi","stream":false,"options":{"num_predict":1}}')
[ -n "$($IN systemctl list-units --plain --no-legend --state=active 'vllama-engine@*')" ] && ok "an engine unit runs before the removal" || bad "no engine before dpkg -r: $out"
$IN sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -r vllama' >> "$ART/install.log" 2>&1 && ok "dpkg -r" || bad "dpkg -r"
[ -z "$($IN systemctl list-units --plain --no-legend --state=active,activating,deactivating 'vllama-engine@*')" ] \
  && ok "dpkg -r stopped the engine units" || bad "engine units after dpkg -r: $($IN systemctl list-units --plain --no-legend 'vllama-engine@*')"
for u in vllamad.service vllamad.socket vllamad-admin.socket; do
  [ "$($IN systemctl is-active $u)" != active ] && ok "$u stopped" || bad "$u still active"
done
api /api/version >/dev/null 2>&1 && bad "port 11434 still answers" || ok "port 11434 closed"
[ -z "$($IN pgrep -u vllama -a -f . 2>/dev/null)" ] && ok "no vllama process after remove" || bad "processes left"
$IN sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -P vllama' >> "$ART/install.log" 2>&1 && ok "dpkg -P" || bad "dpkg -P"
left=$($IN sh -c 'ls /etc/vllama /var/lib/vllama /var/cache/vllama 2>/dev/null; find /etc/systemd/system -name "vllamad*" 2>/dev/null')
[ -z "$left" ] && ok "purge left no config, state or enablement links" || bad "left after purge: $left"

if [ -n "$RPM" ]; then
  echo "== the .rpm on the same machine (rpm's database is its own: --nodeps)"
  # Debian 12's rpm refuses to install without --force-debian; Debian 13's has no such option.
  debian_flag=$($IN rpm --help 2>/dev/null | grep -o -- --force-debian | head -1)
  rpm_() { $IN rpm $debian_flag --nodeps "$@" >> "$ART/rpm.log" 2>&1; }
  # The .deb's purge keeps the user and groups (by design); remove them so %post must make them.
  $IN sh -c 'userdel alice; userdel vllama; groupdel vllama-admin; groupdel vllama' 2>/dev/null
  $IN getent passwd vllama >/dev/null && bad "user vllama still there before rpm -i"
  rpm_ -i /pkgs/vllama.rpm && ok "rpm -i (scriptlets under real systemd)" || { bad "rpm -i"; cat "$ART/rpm.log"; }
  $IN getent passwd vllama >/dev/null && $IN getent group vllama-admin >/dev/null \
    && ok "%post: user vllama and group vllama-admin exist" || bad "%post: sysusers did not run"
  [ "$($IN stat -c %U:%G /var/lib/vllama 2>/dev/null)" = vllama:vllama ] && ok "%post: /var/lib/vllama is vllama's" || bad "/var/lib/vllama: $($IN stat -c %U:%G /var/lib/vllama 2>&1)"
  for s in vllamad.socket vllamad-admin.socket; do
    [ "$($IN systemctl is-enabled $s)" = enabled ] && [ "$($IN systemctl is-active $s)" = active ] \
      && ok "%post: $s enabled and listening" || bad "$s: $($IN systemctl is-enabled $s) $($IN systemctl is-active $s)"
  done
  [ "$($IN systemctl is-active vllamad.service)" = inactive ] && ok "vllamad.service not started yet" || bad "service already running"
  out=$(api /api/version) && echo "$out" | grep -q '"version"' && ok "first request starts it: $out" || bad "first request: $out"
  $IN vllamactl status > "$ART/status-rpm.txt" 2>&1 && ok "vllamactl status" || bad "vllamactl status: $(cat "$ART/status-rpm.txt")"
  $IN sed -i 's/^#filter = "info"/filter = "debug"/' /etc/vllama/vllama.toml
  pid=$(show MainPID)
  rpm_ -U --replacepkgs /pkgs/vllama.rpm && ok "rpm -U (upgrade)" || bad "rpm -U"
  [ "$(show MainPID)" != "$pid" ] && [ "$(show ActiveState)" = active ] && ok "%postun: the running daemon was restarted" \
    || bad "daemon not restarted: $pid -> $(show MainPID) $(show ActiveState)"
  $IN grep -q '^filter = "debug"' /etc/vllama/vllama.toml && ok "the edited config file was kept (%config(noreplace))" || bad "config replaced"
  rpm_ -e vllama && ok "rpm -e" || bad "rpm -e"
  for u in vllamad.service vllamad.socket vllamad-admin.socket; do
    [ "$($IN systemctl is-active $u)" != active ] && ok "%preun: $u stopped" || bad "$u still active"
  done
  api /api/version >/dev/null 2>&1 && bad "port 11434 still answers" || ok "port 11434 closed"
  left=$($IN sh -c 'ls /usr/bin/vllamad /usr/lib/systemd/system/vllamad* 2>/dev/null; find /etc/systemd/system -name "vllamad*" 2>/dev/null')
  [ -z "$left" ] && ok "erase left no binaries, units or enablement links" || bad "left after erase: $left"
fi

echo "== $PASS passed, $FAIL failed (artifacts: $ART)"
[ "$FAIL" = 0 ]
