# vllama %post (the %systemd_post equivalent, plus sysusers): user and folders; on a first
# install the two sockets are enabled and started (the service starts on first connection).
systemd-sysusers vllama.conf || :
systemd-tmpfiles --create vllama.conf || :
chgrp vllama /etc/vllama /etc/vllama/vllama.toml 2>/dev/null || :
chmod 0750 /etc/vllama || :
chmod 0640 /etc/vllama/vllama.toml || :
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload enable vllamad.socket vllamad-admin.socket >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl start vllamad.socket vllamad-admin.socket >/dev/null 2>&1 || :
    fi
    if [ ! -e /var/lib/vllama/venv/bin/vllm ]; then
        echo "vllama: no vLLM engine is installed yet; next step: sudo vllamactl engine install (then: vllamactl doctor)"
    fi
fi
