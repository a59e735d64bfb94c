r"""Starts a local tf.distribute cluster of one program on loopback.

  # N MultiWorkerMirroredStrategy workers
  python -m examples.dlrm.launch --num_workers=2 --module=examples.dlrm.train -- \
      --distribution=multi_worker --data=synthetic --steps=200
  # ParameterServerStrategy: a chief (the coordinator), N workers and M parameter servers
  python -m examples.dlrm.launch --num_workers=2 --num_ps=2 -- \
      --distribution=parameter_server --data=synthetic --model=dense --steps=200

Each task is `python -m <module> <args after -->` with its own TF_CONFIG: the cluster on
127.0.0.1 at free ports, and its task type and index. Their output is streamed line by line
with a `[worker i]` (`[chief]`, `[ps i]`) prefix. When a task fails, on Ctrl-C, or after
--timeout seconds, every task's process group is killed (a worker left alone would wait for
its peers' collectives until its own timeout). If a task cannot start its gRPC server (a
port taken between choosing it and binding it), the whole cluster is started again once on
fresh ports.

Without PS tasks the exit status is 0 when every worker exits with 0, else the first
failure's status. With PS tasks it is the chief's: the workers and parameter servers serve
until they are killed, so the cluster ends when the chief exits (and they are stopped), and
one of them exiting before the chief is a failure. 124 for the timeout, 130 for Ctrl-C.
`launch` is the same as a function, for tests.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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


def cluster_tasks(num_workers: int, num_ps: int = 0) -> List[Tuple[str, int]]:
    """The (task type, index) of every task, in port order: N workers without PS tasks
    (MultiWorkerMirroredStrategy), else a chief, N workers and M ps tasks."""
    workers = [("worker", i) for i in range(num_workers)]
    if not num_ps:
        return workers
    return [("chief", 0)] + workers + [("ps", i) for i in range(num_ps)]


def tf_config(ports: Sequence[int], index: int, task_type: str = "worker",
              num_ps: int = 0) -> str:
    """The TF_CONFIG of task (task_type, index) of a loopback cluster on `ports`: all
    workers without PS tasks, else a chief, len(ports) - 1 - num_ps workers and num_ps ps
    tasks (ports in cluster_tasks' order)."""
    tasks = cluster_tasks(len(ports) - (1 + num_ps if num_ps else 0), num_ps)
    if len(tasks) != len(ports) or (task_type, index) not in tasks:
        raise ValueError(f"no task ({task_type!r}, {index}) among {len(ports)} ports with "
                         f"{num_ps} ps tasks")
    cluster: Dict[str, List[str]] = {}
    for (kind, _), port in zip(tasks, ports):
        cluster.setdefault(kind, []).append(f"127.0.0.1:{port}")
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


class _Worker:
    """One task's process (in a process group of its own) and the thread streaming its
    output; `name` is its log prefix ("worker 0", "chief", "ps 1")."""

    def __init__(self, name, command, env, log, log_lock):
        self.name = name
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
                log(f"[{self.name}] {line.rstrip()}")

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


def _wait(workers, timeout, log, chief=None):
    """The cluster's status once every worker exited with 0, one failed, or time ran out.
    With a chief (ParameterServerStrategy): once the chief exited (its status), or another
    task exited before it (a failure: they serve until killed)."""
    deadline = time.monotonic() + timeout
    while True:
        codes = [w.process.poll() for w in workers]
        if chief is not None:
            if chief.process.poll() is not None:
                return chief.process.returncode
            early = [(w, c) for w, c in zip(workers, codes) if w is not chief and c is not None]
            if early:
                task, code = early[0]
                log(f"[launch] {task.name} exited with status {code} before the chief; "
                    "stopping the others")
                return code or 1
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


def _run_cluster(command, num_workers, num_ps, timeout, env, log):
    """Runs one cluster to its end; returns (status, whether a task could not bind its
    port)."""
    tasks = cluster_tasks(num_workers, num_ps)
    ports = free_ports(len(tasks))
    lock = threading.Lock()
    workers = []
    try:
        for kind, i in tasks:
            worker_env = dict(os.environ if env is None else env)
            worker_env["TF_CONFIG"] = tf_config(ports, i, kind, num_ps)
            name = "chief" if kind == "chief" else f"{kind} {i}"
            workers.append(_Worker(name, command, worker_env, log, lock))
        status = _wait(workers, timeout, log, workers[0] if num_ps else None)
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
           env: Optional[dict] = None, log: Callable[[str], None] = print,
           num_ps: int = 0) -> int:
    """Runs `python -m module args` as `num_workers` loopback workers (and, with num_ps > 0,
    a chief and num_ps parameter servers); returns the exit status (see the module
    docstring). env: the tasks' environment (default this process's), TF_CONFIG set per
    task."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if num_ps < 0:
        raise ValueError(f"num_ps must be >= 0, got {num_ps}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    command = [sys.executable, "-m", module, *args]
    status, port_in_use = _run_cluster(command, num_workers, num_ps, timeout, env, log)
    if port_in_use:
        log("[launch] a worker could not bind its port; starting again on fresh ports")
        status, _ = _run_cluster(command, num_workers, num_ps, timeout, env, log)
    return status


FLAGS = flags.FLAGS
flags.DEFINE_integer("num_workers", 2, "Workers to start on 127.0.0.1.", lower_bound=1)
flags.DEFINE_integer("num_ps", 0, "Parameter servers; > 0 also starts a chief (the "
                     "ParameterServerStrategy coordinator). 0: MultiWorkerMirroredStrategy "
                     "workers only.", lower_bound=0)
flags.DEFINE_string("module", "examples.dlrm.train", "The Python module each worker runs.")
flags.DEFINE_float("timeout", 3600.0, "Seconds after which every worker is killed.",
                   lower_bound=1.0)


def main(argv):
    # absl leaves the arguments after `--` (and any positional ones) in argv.
    sys.exit(launch(FLAGS.module, argv[1:], FLAGS.num_workers, FLAGS.timeout,
                    log=lambda line: print(line, flush=True), num_ps=FLAGS.num_ps))


if __name__ == "__main__":
    app.run(main)
