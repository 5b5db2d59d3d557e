"""Processes and what /proc says about them: ports, CPU pinning, CPU time, RSS."""

import os
import shutil
import signal
import socket
import subprocess
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, name, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port}")


def cpus():
    return os.cpu_count() or 1


def pin(cpu_list):
    """taskset prefix, or nothing on a single-CPU machine."""
    if cpus() < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", cpu_list]


# One proxy worker on CPU 0; the load generator and the upstream on the rest.
PROXY_CPU = "0"
# What `--threads 2` is given: two CPUs, as it would be deployed (see setups.py).
TWO_CPUS = "0,1"


def loadgen_cpus():
    return "1" if cpus() == 2 else f"1-{cpus() - 1}"


def descendants(pid):
    """pid and all its children (NGINX master + workers)."""
    out = [pid]
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return out
    for c in children:
        out.extend(descendants(int(c)))
    return out


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pids):
    """utime + stime of every thread of these processes (the process's stat sums its threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


class Sampler:
    """Samples the summed RSS of process trees every 20 ms; keeps the series, so a caller can
    tell a flat profile from one that grows with the body."""

    def __init__(self, roots):
        self.roots, self.series, self._stop = roots, [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.series.append(rss_kib([p for r in self.roots for p in descendants(r)]))
            time.sleep(0.02)

    @property
    def peak(self):
        return max(self.series, default=0)

    def growth(self):
        """Peak of the second half minus peak of the first half, KiB: near 0 when memory is
        flat, about half the body when the proxy buffers it."""
        n = len(self.series)
        if n < 4:
            return 0
        return max(self.series[n // 2:]) - max(self.series[: n // 2])

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


class Proc:
    """One started process (own session, so its whole tree is stopped), output to a file."""

    def __init__(self, name, argv, port, logdir, env=None):
        self.name, self.port = name, port
        self.log_path = os.path.join(logdir, f"{name}.log")
        with open(self.log_path, "w") as log:
            self.p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_port(port, self.p, name)
        except RuntimeError:
            self.stop()
            raise

    def pids(self):
        return descendants(self.p.pid)

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
