"""Starting, finding and stopping the control plane's background processes.

Each process runs in its own session (so it outlives `gradatim cluster up` and
can be signalled as a whole process group) with output appended to one log file.
Linux only: liveness is read from /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

from gradatim.cluster.errors import ClusterError


def spawn(command: list[str], log_file: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Starts `command` in its own process group (its pid is the group's id), appending its output to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        log.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def is_running(pid: int, executable: str) -> bool:
    """True if `pid` is alive (not a zombie) and still runs `executable` (guards against pid reuse)."""
    reap(pid)
    stat = read_stat(pid)
    if stat is None or stat[0] == "Z":
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    # Empty while an exec is still setting up the new image (Popen has returned by then): alive, not reused.
    return argv0 in (executable, "")


def processes_in_group(group: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `group`."""
    reap(group)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None and stat[0] != "Z" and stat[2] == group:
                found.append(int(entry))
    return found


def stop_groups(groups: dict[str, int], grace_seconds: float) -> dict[str, list[int]]:
    """SIGTERM every group at once, SIGKILL what is left after the grace period.

    Returns the processes still alive afterwards per name (empty lists when all stopped)."""
    signal_groups(groups.values(), signal.SIGTERM)
    wait_for(lambda: not any(processes_in_group(g) for g in groups.values()), grace_seconds)
    left = [g for g in groups.values() if processes_in_group(g)]
    if left:
        signal_groups(left, signal.SIGKILL)
        wait_for(lambda: not any(processes_in_group(g) for g in left), 10)
    return {name: processes_in_group(group) for name, group in groups.items()}


def signal_groups(groups: Iterable[int], signum: int) -> None:
    for group in groups:
        try:
            os.killpg(group, signum)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def reap(pid: int) -> None:
    """Collects the exit status if `pid` is our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, process group) from /proc/<pid>/stat, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces
    return fields[0], int(fields[1]), int(fields[2])


def pick_free_ports(names: Iterable[str], preferred: dict[str, int], host: str) -> dict[str, int]:
    """A free port per name; reuses the preferred (previous) port when it is still free,
    so kubeconfigs and env files stay stable across restarts."""
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for name in names:
            for candidate in (preferred.get(name, 0), 0):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                # As Go servers do: a port with only TIME_WAIT connections left counts as free.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, candidate))
                except OSError:
                    sock.close()
                    continue
                held.append(sock)  # keep it bound until all are chosen, so none repeats
                ports[name] = sock.getsockname()[1]
                break
    finally:
        for sock in held:
            sock.close()
    return ports


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def require_running(name: str, pid: int, executable: str, log_file: Path) -> None:
    if not is_running(pid, executable):
        raise ClusterError(f"{name} exited during start-up; last lines of {log_file}:\n{tail(log_file)}")
