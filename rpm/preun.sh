# vllama %preun (the %systemd_preun equivalent): on erase, disable and stop everything.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now vllamad.service vllamad.socket vllamad-admin.socket >/dev/null 2>&1 || :
    # vllamad stops its engine units as it stops; any left (it was not running) go too.
    systemctl stop 'vllama-engine@*.service' >/dev/null 2>&1 || :
fi
