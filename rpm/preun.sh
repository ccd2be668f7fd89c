# vllama %preun (the %systemd_preun equivalent): on erase, disable and stop everything.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now vllamad.service vllamad.socket vllamad-admin.socket >/dev/null 2>&1 || :
fi
