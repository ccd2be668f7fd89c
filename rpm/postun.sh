# vllama %postun (the %systemd_postun_with_restart equivalent): systemd forgets the old
# units; an upgrade restarts a running daemon on the new binary.
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ] && [ -d /run/systemd/system ]; then
    systemctl try-restart vllamad.service >/dev/null 2>&1 || :
fi
