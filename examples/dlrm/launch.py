r"""Starts N local workers of a tf.distribute.MultiWorkerMirroredStrategy program on loopback.

  python -m examples.dlrm.launch --num_workers=2 --module=examples.dlrm.train -- \
      --distribution=multi_worker --data=synthetic --steps=200

Each worker is `python -m <module> <args after -->` with its own TF_CONFIG: a cluster of N
workers on 127.0.0.1 at free ports, and its task index. Their output is streamed line by line
with a `[worker i]` prefix. When a worker fails, on Ctrl-C, or after --timeout seconds, every
worker's process group is killed (a worker left alone would wait for its peers' collectives
until its own timeout). If a worker cannot start its gRPC server (a port taken between
choosing it and binding it), the whole cluster is started again once on fresh ports.

The exit status is 0 when every worker exits with 0, else the first failure's status
(124 for the timeout, 130 for Ctrl-C). `launch` is the same as a function, for tests.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, Sequence

from absl import app, flags

PORT_IN_USE = "Could not start gRPC server"
TIMEOUT_STATUS = 124
INTERRUPT_STATUS = 130
# Seconds a worker is given to exit after SIGTERM before SIGKILL.
KILL_GRACE_S = 5.0


def free_ports(count: int) -> List[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (portpicker when installed, else ports
    the kernel hands out for port 0; all are held open until all are chosen, so they are
    distinct)."""
    try:
        import portpicker  # pylint: disable=import-outside-toplevel
    except ImportError:
        portpicker = None
    if portpicker is not None:
        return [portpicker.pick_unused_port() for _ in range(count)]
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: Sequence[int], index: int) -> str:
    """The TF_CONFIG of worker `index` of a loopback cluster on `ports`."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


class _Worker:
    """One worker process (in a process group of its own) and the thread streaming its
    output."""

    def __init__(self, index, command, env, log, log_lock):
        self.index = index
        self.port_in_use = False
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, text=True, errors="replace", bufsize=1)
        self._thread = threading.Thread(target=self._stream, args=(log, log_lock), daemon=True)
        self._thread.start()

    def _stream(self, log, log_lock):
        for line in self.process.stdout:
            if PORT_IN_USE in line:
                self.port_in_use = True
            with log_lock:
                log(f"[worker {self.index}] {line.rstrip()}")

    def kill(self):
        """SIGTERM to the worker's process group, SIGKILL if it outlives KILL_GRACE_S."""
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def finish(self):
        self._thread.join(timeout=KILL_GRACE_S)


def _wait(workers, timeout, log):
    """The cluster's status once every worker exited with 0, one failed, or time ran out."""
    deadline = time.monotonic() + timeout
    while True:
        codes = [w.process.poll() for w in workers]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            log(f"[launch] a worker exited with status {failed[0]}; stopping the others")
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        if time.monotonic() > deadline:
            log(f"[launch] timeout after {timeout:g} s; stopping every worker")
            return TIMEOUT_STATUS
        time.sleep(0.2)


def _run_cluster(command, num_workers, timeout, env, log):
    """Runs one cluster to its end; returns (status, whether a worker could not bind its
    port)."""
    ports = free_ports(num_workers)
    lock = threading.Lock()
    workers = []
    try:
        for i in range(num_workers):
            worker_env = dict(os.environ if env is None else env)
            worker_env["TF_CONFIG"] = tf_config(ports, i)
            workers.append(_Worker(i, command, worker_env, log, lock))
        status = _wait(workers, timeout, log)
    except KeyboardInterrupt:
        log("[launch] interrupted; stopping every worker")
        status = INTERRUPT_STATUS
    finally:
        for w in workers:
            w.kill()
        for w in workers:
            w.finish()  # every line read, so port_in_use is final
    port_in_use = status not in (0, INTERRUPT_STATUS) and any(w.port_in_use for w in workers)
    return status, port_in_use


def launch(module: str, args: Sequence[str], num_workers: int, timeout: float = 600.0,
           env: Optional[dict] = None, log: Callable[[str], None] = print) -> int:
    """Runs `python -m module args` as `num_workers` loopback workers; returns the exit
    status (see the module docstring). env: the workers' environment (default this
    process's), TF_CONFIG set per worker."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    command = [sys.executable, "-m", module, *args]
    status, port_in_use = _run_cluster(command, num_workers, timeout, env, log)
    if port_in_use:
        log("[launch] a worker could not bind its port; starting again on fresh ports")
        status, _ = _run_cluster(command, num_workers, timeout, env, log)
    return status


FLAGS = flags.FLAGS
flags.DEFINE_integer("num_workers", 2, "Workers to start on 127.0.0.1.", lower_bound=1)
flags.DEFINE_string("module", "examples.dlrm.train", "The Python module each worker runs.")
flags.DEFINE_float("timeout", 3600.0, "Seconds after which every worker is killed.",
                   lower_bound=1.0)


def main(argv):
    # absl leaves the arguments after `--` (and any positional ones) in argv.
    sys.exit(launch(FLAGS.module, argv[1:], FLAGS.num_workers, FLAGS.timeout,
                    log=lambda line: print(line, flush=True)))


if __name__ == "__main__":
    app.run(main)
