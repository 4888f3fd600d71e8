"""A CeleryExecutor stack on one machine for tests: a throwaway Redis broker, Celery workers that share no local
folder, Celery remote control to say which worker takes tasks, and a /proc sampler of a worker's task threads.

Loaded by path (tests/ is not a package), like postgres.py. Each worker gets its own working directory, HOME,
TMPDIR, AIRFLOW_HOME (its task logs, its parse cache), its own copy of the DAGs folder (Airflow 3 resolves the
"dags-folder" bundle from the worker's own [core] dags_folder) and of the pipelines folder, and its own
hostname (`lifecycle.devtools.local_airflow.hostname`), which task instances report.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lifecycle.devtools import local_airflow as la

REDIS_SERVER = "redis-server"
DEFAULT_QUEUE = "default"
TASK_TITLE = "airflow worker -- "  # the task process's title (Airflow 3's task runner sets it)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class CeleryStackError(RuntimeError):
    """The broker or a worker did not come up or did not answer."""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_broker(folder: Path) -> Iterator[str]:
    """A Redis URL for the broker: a throwaway redis-server on a free port (no persistence, its own folder), so
    a test never touches a shared Redis's data; else the machine's Redis on 6379 when one answers there."""
    binary = shutil.which(REDIS_SERVER) or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if binary is None:
        if _answers(6379):
            yield "redis://127.0.0.1:6379/0"
            return
        raise CeleryStackError("no redis-server binary on the PATH and no Redis answering on 127.0.0.1:6379")
    folder.mkdir(parents=True, exist_ok=True)
    port = la.free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", str(folder), "--logfile", str(folder / "redis.log")]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _answers(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise CeleryStackError(f"redis-server on port {port} did not start:\n{la.tail(folder / 'redis.log')}")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        if server.poll() is None:
            server.kill()


@dataclass
class Worker:
    """One Celery worker: its name (also the task instances' hostname), slots, cores and private folders."""

    name: str
    concurrency: int
    cores: int
    root: Path
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)

    @property
    def celery_name(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    @property
    def log_folder(self) -> Path:
        return self.root / "airflow" / "logs"

    def prepare(self, dags: Path, pipelines: Path) -> la.ExtraService:
        """Its own folders and copies of the DAGs and pipelines; the service running_airflow starts."""
        for sub in ("home", "tmp", "work", "airflow"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copytree(dags, self.root / "dags", ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        shutil.copytree(pipelines, self.root / "pipelines", dirs_exist_ok=True)
        env = {
            "HOME": str(self.root / "home"),
            "TMPDIR": str(self.root / "tmp"),
            "AIRFLOW_HOME": str(self.root / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.root / "dags"),
            "PIPELINES_DIR": str(self.root / "pipelines"),
            la.HOSTNAME_VARIABLE: self.name,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            "LIFECYCLE_WORKER_CORES": str(self.cores),
        }
        args = ("celery", "worker", "--celery-hostname", self.celery_name, "--concurrency", str(self.concurrency))
        args += ("--queues", ",".join(self.queues), "--skip-serve-logs", "--without-mingle", "--without-gossip")
        return la.ExtraService(args=args, env=env, cwd=self.root / "work")


def control(broker_url: str):
    """Celery's remote control over the broker (add_consumer, cancel_consumer, ping, active_queues)."""
    from celery import Celery

    return Celery("lifecycle-tests", broker=broker_url).control


def wait_for_workers(broker_url: str, workers: list[Worker], airflow: la.LocalAirflow, timeout: float = 180) -> None:
    """Until every worker answers a ping; CeleryStackError with the tail of a silent worker's log."""
    names = {worker.celery_name for worker in workers}
    deadline = time.monotonic() + timeout
    remote = control(broker_url)
    while True:
        for worker in workers:
            process = airflow.processes[worker.name]
            if process.poll() is not None:
                raise CeleryStackError(
                    f"worker {worker.name} exited with code {process.returncode}:\n{la.tail(airflow.log_file(worker.name))}"
                )
        answered = {name for reply in remote.ping(destination=sorted(names), timeout=2) for name in reply}
        if names <= answered:
            return
        if time.monotonic() > deadline:
            silent = [w for w in workers if w.celery_name not in answered]
            logs = "\n".join(f"--- {w.name}:\n{la.tail(airflow.log_file(w.name))}" for w in silent)
            raise CeleryStackError(f"workers {[w.name for w in silent]} did not answer within {timeout:.0f}s\n{logs}")
        time.sleep(1)


def consume(
    broker_url: str, worker: Worker, queue: str = DEFAULT_QUEUE, *, on: bool = True, timeout: float = 30
) -> None:
    """Make a worker start (on) or stop (off) taking tasks from a queue, and wait until it reports so (a busy
    worker can miss a reply's deadline: asked again until `timeout`)."""
    remote = control(broker_url)
    deadline = time.monotonic() + timeout
    while True:
        if on:
            remote.add_consumer(queue, destination=[worker.celery_name], reply=True, timeout=5)
        else:
            remote.cancel_consumer(queue, destination=[worker.celery_name], reply=True, timeout=5)
        replies = remote.inspect(destination=[worker.celery_name], timeout=5).active_queues() or {}
        queues = {q["name"] for q in replies.get(worker.celery_name, [])}
        if worker.celery_name in replies and (queue in queues) == on:
            return
        if time.monotonic() > deadline:
            raise CeleryStackError(
                f"worker {worker.name} consumes {sorted(queues)} ({'no answer' if not replies else 'answered'}) "
                f"after being asked to {'add' if on else 'cancel'} {queue} for {timeout:.0f}s"
            )
        time.sleep(1)


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _thread_ticks(pid: int) -> dict[tuple[int, int], int]:
    """(pid, tid) -> user + system clock ticks of each thread of a process."""
    ticks = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                fields = stat[stat.rfind(")") + 2 :].split()
                ticks[(pid, int(tid))] = int(fields[11]) + int(fields[12])
    return ticks


@dataclass
class Sample:
    at: float
    tasks: int  # task processes running on the worker
    busy_threads: int  # threads (of those and their children) that ran >= busy_share of the interval
    threads: int  # all threads of those processes


@dataclass
class ThreadSampler:
    """Samples a worker's task processes from /proc every `interval` seconds, in a thread of the test process.

    A thread counts as busy in an interval when it ran (user + system time) for at least `busy_share` of it:
    idle pools (OpenBLAS, Airflow's own threads) do not count, a computing thread does even on a loaded machine.
    """

    worker_pid: int
    interval: float = 0.5
    busy_share: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ThreadSampler:
        self._thread = threading.Thread(target=self._run, name="thread-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _snapshot(self) -> tuple[int, dict[tuple[int, int], int]]:
        table = la._proc_table()
        tasks = [pid for pid in _descendants(self.worker_pid, table) if _title(pid).startswith(TASK_TITLE)]
        ticks: dict[tuple[int, int], int] = {}
        for task in tasks:
            for pid in (task, *_descendants(task, table)):
                ticks.update(_thread_ticks(pid))
        return len(tasks), ticks

    def _run(self) -> None:
        last_at, (_, last) = time.monotonic(), self._snapshot()
        while not self._stop.wait(self.interval):
            at, (tasks, ticks) = time.monotonic(), self._snapshot()
            needed = self.busy_share * (at - last_at) * CLOCK_TICKS
            busy = sum(1 for key, value in ticks.items() if value - last.get(key, value) >= needed)
            if tasks:
                self.samples.append(Sample(at=at, tasks=tasks, busy_threads=busy, threads=len(ticks)))
            last_at, last = at, ticks
