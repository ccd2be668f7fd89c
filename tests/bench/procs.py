"""What the benchmark scripts share: a free loopback port, a process's CPU time and
resident memory from /proc, and an on/off comparison."""
import os
import socket
import statistics

_TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, seconds=10):
    """Waits until something accepts on 127.0.0.1:port."""
    import time
    for _ in range(int(seconds / 0.02)):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"port {port} never opened")


def cpu_seconds(pid):
    """User + system CPU time of a process (clock-tick resolution)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_ns_seconds(pid):
    """CPU time of a process's threads, from the scheduler's nanosecond counters
    (/proc/PID/task/*/schedstat; clock ticks are too coarse for microseconds a request)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total / 1e9


def stop_all(procs, grace=15):
    """SIGTERM to each process, then waits for it (SIGKILL after `grace` seconds)."""
    import signal, subprocess
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()


def rss_mib(pid, field="VmRSS"):
    """Resident memory of a process, MiB (VmHWM: its peak)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024


def on_off(run, label, n, repeat=3):
    """Runs `run(on)` `repeat` times each way, alternating; `run` returns (µs of CPU per
    request, requests/s). Prints the medians and the on/off ratios."""
    results = {True: [], False: []}
    for _ in range(repeat):
        for on in (False, True):
            results[on].append(run(on))
    med = {on: (statistics.median(r[0] for r in results[on]), statistics.median(r[1] for r in results[on]))
           for on in (False, True)}
    for on in (False, True):
        print(f"{label} {'on ' if on else 'off'}: {med[on][0]:.1f} µs vllamad CPU per request, "
              f"{med[on][1]:.0f} requests/s (median of {repeat} x {n})")
    print(f"ratio on/off: CPU per request {med[True][0] / med[False][0]:.2f}, "
          f"requests/s {med[True][1] / med[False][1]:.3f}")
