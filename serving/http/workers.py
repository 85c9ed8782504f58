"""Several uvicorn worker processes behind one listening socket, and the parent that watches them.

uvicorn's own supervisor (`uvicorn.run(..., workers=N)`) checks a worker by sending it a ping and
blocking until the answer or the health-check timeout. A worker still loading its model, or one
that died without closing its end of the pipe, keeps the parent in that wait for the whole
timeout (60 s here, since a worker needs that long to start on a busy host), and SIGTERM is
handled only afterwards: a service manager that allows 30 s before SIGKILL saw `ctit serve
--workers 2` ignore its stop request.

`run_workers` never blocks on one worker. It waits on every worker's exit sentinel and answer
pipe and on a wake-up descriptor that the signal handlers write to, so a stop request (SIGTERM or
SIGINT) is acted on at once, a dead worker is seen the moment it exits, and a worker that stops
answering pings for `Config.timeout_worker_healthcheck` seconds is killed and replaced. SIGHUP
replaces the workers one at a time. On stop each worker gets SIGTERM (uvicorn's graceful
shutdown) and, after `STOP_GRACE_S` or a second stop request, SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait

import uvicorn

logger = logging.getLogger("uvicorn.error")

#: How long a stopping worker may finish its requests before it is killed.
STOP_GRACE_S = 25.0
#: Seconds between two pings of a worker that answered the last one.
PING_INTERVAL_S = 1.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED = (*_STOP_SIGNALS, signal.SIGHUP)
_SPAWN = multiprocessing.get_context("spawn")


_UP, _STARTING = b"up", b"starting"


def _answer_pings(conn: Connection, server: uvicorn.Server) -> None:
    """The worker's health thread: answers each ping (up or starting) until the parent goes."""
    with contextlib.suppress(EOFError, OSError):
        while True:
            conn.recv_bytes()
            conn.send_bytes(_UP if server.started else _STARTING)
    # The parent is gone (killed, or ended by a signal it does not handle): stop, do not keep the
    # port unsupervised.
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(config: uvicorn.Config, sockets: list[socket.socket], conn: Connection) -> None:
    """Entry point of one worker process: answer pings first, then load the app and serve."""
    server = uvicorn.Server(config)
    health = threading.Thread(
        target=_answer_pings, args=(conn, server), name="ctit-health", daemon=True
    )
    health.start()
    config.configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=sockets)


class _Worker:
    """One worker process, the parent's end of its ping pipe, and its outstanding ping."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self.conn, child_end = _SPAWN.Pipe()
        self.process = _SPAWN.Process(
            target=_worker_main, args=(config, sockets, child_end), name="ctit-worker"
        )
        self.process.start()
        # Only the child holds its end now, so its death reads as end-of-file here.
        child_end.close()
        # The first ping waits in the pipe: a new worker has the health-check timeout to start.
        self.conn.send_bytes(b"ping")
        self.waiting_since: float | None = time.monotonic()
        self.answered_at = self.waiting_since
        self.up = False  # the app has started and takes requests
        self.stop_sent = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def ping_if_due(self, now: float) -> None:
        if self.waiting_since is None and now - self.answered_at >= PING_INTERVAL_S:
            try:
                self.conn.send_bytes(b"ping")
            except OSError:  # the worker is gone; its sentinel says so on the next turn
                return
            self.waiting_since = now

    def read_answer(self, now: float) -> None:
        with contextlib.suppress(EOFError, OSError):
            while self.conn.poll():
                self.up = self.conn.recv_bytes() == _UP
                self.waiting_since = None
                self.answered_at = now

    def hung(self, now: float, timeout: float) -> bool:
        return self.waiting_since is not None and now - self.waiting_since > timeout

    def stop(self) -> None:
        """SIGTERM; sent again on each call, since a child forked a moment ago may not yet have
        reset its handlers (the parent's) by exec and then drops the signal."""
        if self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            self.stop_sent = True

    def kill(self) -> None:
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join()
        self.conn.close()

    def describe_exit(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:  # a real-time signal has no name
                return f"killed by signal {-code}"
        return f"exit code {code}"


class _Signals:
    """Signal handlers that queue the signal and wake the parent's wait through a socket pair."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.reader, self._writer = socket.socketpair()
        for end in (self.reader, self._writer):
            end.setblocking(False)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._handle) for sig in _HANDLED}
        previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.reader.close()
            self._writer.close()

    def _handle(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)

    def take(self) -> list[int]:
        with contextlib.suppress(BlockingIOError):
            while self.reader.recv(512):
                pass
        taken, self.pending = self.pending, []
        return taken


class _Supervisor:
    def __init__(self, config: uvicorn.Config, workers: int) -> None:
        self.config = config
        self.count = workers
        self.sockets = [config.bind_socket()]
        self.signals = _Signals()
        self.workers: list[_Worker] = []
        self.stopping = False
        self.restart_queue: list[_Worker] = []

    def run(self) -> None:
        logger.info("Started parent process [%d]", os.getpid())
        with self.signals.installed():
            try:
                for _ in range(self.count):
                    self.workers.append(self._start())
                while not self.stopping:
                    self._turn(timeout=PING_INTERVAL_S / 2)
            finally:  # whatever ends the loop, no worker outlives the parent
                self._stop_all()
                for sock in self.sockets:
                    sock.close()
        logger.info("Stopping parent process [%d]", os.getpid())

    def _start(self) -> _Worker:
        worker = _Worker(self.config, self.sockets)
        logger.debug("Started worker process [%d]", worker.pid)
        return worker

    def _wait(self, timeout: float) -> set[object]:
        waitables: list[object] = [self.signals.reader]
        for worker in self.workers:
            waitables += [worker.process.sentinel, worker.conn]
        return set(wait(waitables, timeout=timeout))  # type: ignore[arg-type]

    def _turn(self, timeout: float) -> None:
        ready = self._wait(timeout)
        for signum in self.signals.take():
            self._on_signal(signum)
        if self.stopping:
            return
        now = time.monotonic()
        health_timeout = float(self.config.timeout_worker_healthcheck)
        for index, worker in enumerate(self.workers):
            if worker.conn in ready:
                worker.read_answer(now)
            if worker.process.sentinel in ready or not worker.process.is_alive():
                worker.kill()
                if worker.stop_sent:  # a SIGHUP replacement that has finished
                    logger.info("Worker process [%d] stopped for a restart", worker.pid)
                else:
                    logger.warning(
                        "Worker process [%d] died (%s); starting another",
                        worker.pid,
                        worker.describe_exit(),
                    )
                self.workers[index] = self._start()
            elif worker.hung(now, health_timeout):
                logger.warning(
                    "Worker process [%d] has not answered for %.0f s; killing and replacing it",
                    worker.pid,
                    now - (worker.waiting_since or now),
                )
                worker.kill()
                self.workers[index] = self._start()
            else:
                worker.ping_if_due(now)
        self._continue_restart()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in _STOP_SIGNALS:
            logger.info("Received %s, stopping %d worker processes", name, len(self.workers))
            self.stopping = True
        elif signum == signal.SIGHUP and not self.restart_queue:
            logger.info("Received SIGHUP, replacing the worker processes one at a time")
            self.restart_queue = list(self.workers)

    def _continue_restart(self) -> None:
        """SIGHUP: stop one old worker at a time, each once every other worker takes requests.

        The death check in `_turn` starts the successor of the worker stopped here."""
        self.restart_queue = [w for w in self.restart_queue if w in self.workers]
        if not self.restart_queue or any(w.stop_sent for w in self.workers):
            return
        if all(w.up for w in self.workers if w is not self.restart_queue[0]):
            self.restart_queue.pop(0).stop()

    def _stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        while any(w.process.exitcode is None for w in self.workers):
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning("Workers still running after %.0f s; killing them", STOP_GRACE_S)
                break
            sentinels = [w.process.sentinel for w in self.workers if w.process.exitcode is None]
            if not wait([self.signals.reader, *sentinels], timeout=min(left, 1.0)):
                for worker in self.workers:
                    worker.stop()
            if any(s in _STOP_SIGNALS for s in self.signals.take()):
                logger.warning("Second stop request; killing the workers")
                break
        for worker in self.workers:
            worker.kill()


def run_workers(config: uvicorn.Config, workers: int) -> None:
    """Serve `config` (an import-string app) from `workers` processes until SIGTERM or SIGINT."""
    if workers < 2:
        raise ValueError(f"run_workers needs at least 2 workers, got {workers}")
    if not isinstance(config.app, str):
        raise ValueError("worker processes import the app: pass it as 'module:attribute'")
    _Supervisor(config, workers).run()
