"""Several uvicorn worker processes behind one listening socket, and the parent that watches them.

uvicorn's own supervisor (`uvicorn.run(..., workers=N)`) checks a worker by sending it a ping and
blocking until the answer or the health-check timeout. A worker still loading its model, or one
that died without closing its end of the pipe, keeps the parent in that wait for the whole
timeout (60 s here, since a worker needs that long to start on a busy host), and SIGTERM is
handled only afterwards: a service manager that allows 30 s before SIGKILL saw `ctit serve
--workers 2` ignore its stop request.

`run_workers` never blocks on one worker. It waits on every worker's exit sentinel and answer
pipe and on the descriptor that signals are written to, so a stop request is acted on at once, a
dead worker is seen the moment it exits, and a worker that stops answering pings for
`Config.timeout_worker_healthcheck` seconds is killed and replaced. A started worker answers on
its event loop, so one whose event loop is blocked counts as not answering.

Signals to the parent:

- SIGTERM, SIGINT, SIGQUIT: stop. Each worker gets SIGTERM (uvicorn's graceful shutdown) and,
  after `stop_grace_s` or a second stop request, SIGKILL.
- SIGHUP: replace the workers one at a time, unresponsive ones first, each healthy one stopped
  only while another answers; an old worker that does not finish within `stop_grace_s` is killed.
  A SIGHUP during a restart starts it over, so every worker ends up newer than the last SIGHUP.
- SIGTTIN, SIGTTOU: one worker more (up to `MAX_WORKERS`), one fewer (down to `MIN_WORKERS`;
  not during a restart). Only when neither standard output nor standard error is a terminal: on
  a terminal they keep their job-control meaning (a handled SIGTTOU makes a background write to a
  `stty tostop` terminal retry forever).
- SIGUSR1, SIGUSR2: logged and ignored (their default action would end the parent).

The workers do not act on the parent's signals, so a signal sent to the whole process group (a
terminal's Ctrl-\\, `kill -HUP -- -PGID`) acts once, through the parent: HUP, QUIT, USR1 and USR2
reach a no-op handler that does not interrupt system calls; TTIN and TTOU are ignored (programs a
worker starts inherit that, as a background write to a terminal needs). They are blocked from
the fork until then.

A worker that dies before it ever took requests is started again after a pause that doubles from
`RESTART_DELAY_S` to `MAX_RESTART_DELAY_S`, so a worker that cannot start does not spin the CPU
with fresh interpreters; a worker that had been up is replaced at once. A worker that has not
started its app within `start_timeout_s` (an import or model load that hangs) is killed and
counts as such a failed start, so a restart waiting for it does not wait forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import uvicorn

from serving.settings import MAX_WORKERS

logger = logging.getLogger("uvicorn.error")

#: How long a stopping worker may finish its requests before it is killed.
STOP_GRACE_S = 25.0
#: Seconds between two pings of a worker that answered the last one.
PING_INTERVAL_S = 1.0
#: A worker whose ping has waited this long is not counted on to take requests.
UNRESPONSIVE_AFTER_S = 2 * PING_INTERVAL_S
#: The pause before restarting a worker that died before it took requests, doubled each time.
RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
#: The fewest workers under this supervisor (one runs without it): with two, a restart always
#: has one worker serving. The most is `serving.settings.MAX_WORKERS`, shared with the CLI.
MIN_WORKERS = 2
#: A killed worker that has not ended after this long is reported.
ZOMBIE_REPORT_S = 10.0
#: A restart that has not stopped a worker for this long is reported as stalled.
STALLED_RESTART_S = 120.0
#: A worker that has not started its app (import, model load) after this long is killed.
START_TIMEOUT_S = 300.0

_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
_SCALING_SIGNALS = (signal.SIGTTIN, signal.SIGTTOU)
_IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
#: Signals meant for the parent only: a worker that received them from a group-wide kill would
#: otherwise die (HUP, USR1, USR2), dump core (QUIT) or be suspended (TTIN, TTOU).
_WORKER_NOOP = (signal.SIGHUP, signal.SIGQUIT, *_IGNORED_SIGNALS)
_PARENT_ONLY = (*_WORKER_NOOP, *_SCALING_SIGNALS)
_SPAWN = multiprocessing.get_context("spawn")

# A worker's answers to a ping, and the message it sends unasked once uvicorn has started.
_UP, _STARTING, _STARTED = b"up", b"starting", b"started"


class _Health:
    """The worker's end of the ping pipe: answers pings, and says when it is up.

    A thread reads the pings. While the app loads (its import blocks the event loop) the thread
    answers "starting" itself; once uvicorn has started, the event loop answers "up", so a worker
    whose event loop is blocked (it can take no requests) leaves its pings unanswered and is
    replaced after the health-check timeout. Long scoring runs in a thread (serving.http.routes),
    so a busy worker still answers; parsing and validating the largest batch the limits allow
    (1,000 records, 32 MiB) hold the loop for about 3 s, long enough for the worker to count as
    unresponsive meanwhile (so a SIGHUP or SIGTTOU may pick it first; it is stopped gracefully
    and finishes the batch), far short of the health-check timeout."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.up = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # the health thread and the event loop both send

    def _send(self, message: bytes) -> None:
        with self._lock:
            self.conn.send_bytes(message)

    def announce_up(self) -> None:
        """Sent as soon as uvicorn has started, not at the next ping: a worker that dies on its
        first requests is then known to have started (a request accepted in the same moment as
        this message may still come first)."""
        self.loop = asyncio.get_running_loop()
        self.up = True
        with contextlib.suppress(OSError):
            self._send(_STARTED)

    def _pong(self) -> None:
        with contextlib.suppress(OSError):
            self._send(_UP)

    def answer_pings(self) -> None:
        """The health thread: answers each ping (up or starting) until the parent goes."""
        with contextlib.suppress(EOFError, OSError):
            while True:
                self.conn.recv_bytes()
                if self.loop is None:
                    self._send(_STARTING)
                    continue
                try:
                    self.loop.call_soon_threadsafe(self._pong)
                except RuntimeError:  # the loop has closed: the worker is on its way out
                    self._send(_UP)
        # The parent is gone (killed, or ended by a signal it does not handle): stop, do not keep
        # the port unsupervised.
        os.kill(os.getpid(), signal.SIGTERM)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, health: _Health) -> None:
        super().__init__(config)
        self.health = health

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.health.announce_up()


def _no_op(_signum: int, _frame: object) -> None:
    """A worker's handler for the parent's signals: unlike SIG_IGN, it is not inherited by the
    programs a worker runs (handlers are reset by exec)."""


def _worker_main(config: uvicorn.Config, sockets: list[socket.socket], conn: Connection) -> None:
    """Entry point of one worker process: answer pings first, then load the app and serve."""
    # The parent's signals were blocked since the fork (see `_Worker`). Handle them first, then
    # unblock them: any that came meanwhile reach the handler and do nothing.
    for sig in _WORKER_NOOP:
        signal.signal(sig, _no_op)
        signal.siginterrupt(sig, False)  # restartable system calls of the app carry on
    for sig in _SCALING_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PARENT_ONLY)
    health = _Health(conn)
    threading.Thread(target=health.answer_pings, name="ctit-health", daemon=True).start()
    config.configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        _Server(config, health).run(sockets=sockets)


class _Worker:
    """One worker process, the parent's end of its ping pipe, and its outstanding ping."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], failed_starts: int
    ) -> None:
        self.conn, child_end = _SPAWN.Pipe()
        self.process = _SPAWN.Process(
            target=_worker_main, args=(config, sockets, child_end), name="ctit-worker"
        )
        # The new process (and multiprocessing's resource tracker, started with the first one)
        # inherits this mask: a group-wide signal meant for the parent cannot end it before it
        # handles such signals. The parent takes any that came meanwhile when they are unblocked.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_ONLY)
        try:
            self.process.start()
        except BaseException:
            child_end.close()
            self.conn.close()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        # Only the child holds its end now, so its death reads as end-of-file here.
        child_end.close()
        # The first ping waits in the pipe: a new worker has the health-check timeout to start.
        self.conn.send_bytes(b"ping")
        self.created_at = time.monotonic()
        self.waiting_since: float | None = self.created_at
        self.answered_at = self.created_at
        self.up = False  # uvicorn has started in it: it takes (or took) requests
        #: How many workers before this one died in the same place without ever taking requests.
        self.failed_starts = failed_starts
        self.stopped_at: float | None = None  # when it was first sent SIGTERM
        self.retiring = False  # stopped for good (SIGTTOU), not to be replaced
        self.for_restart = False  # it replaces a worker stopped by a restart
        self.killed_at: float | None = None
        self.reported_stuck = False

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
                message = self.conn.recv_bytes()
                self.up = self.up or message in (_UP, _STARTED)
                if message != _STARTED:  # an answer to the outstanding ping
                    self.waiting_since = None
                    self.answered_at = now

    def hung(self, now: float, timeout: float) -> bool:
        return self.waiting_since is not None and now - self.waiting_since > timeout

    def serving(self, now: float) -> bool:
        """Up, not stopping, and answering its pings: it can be counted on to take requests."""
        return self.up and self.stopped_at is None and not self.hung(now, UNRESPONSIVE_AFTER_S)

    def slow_to_start(self, now: float, timeout: float) -> bool:
        """Still loading its app `timeout` seconds after it was started (and not stopping)."""
        return not self.up and self.stopped_at is None and now - self.created_at > timeout

    def overdue(self, now: float, grace: float) -> bool:
        """Sent SIGTERM more than `grace` seconds ago and still running."""
        return self.stopped_at is not None and now - self.stopped_at > grace

    def stop(self) -> None:
        """SIGTERM, uvicorn's graceful shutdown. Later calls send it again: uvicorn handles a
        repeated SIGTERM like the first, so the repeat costs nothing; it is a guard, not a fix
        for a lost signal seen here."""
        if self.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if self.stopped_at is None:
                self.stopped_at = time.monotonic()

    def kill(self, wait_s: float = 0.2) -> bool:
        """SIGKILL and reap; false if it has not ended within `wait_s` (a large process may take a
        while to free its memory; one stuck in the kernel never ends)."""
        if self.process.exitcode is None:
            self.process.kill()
            self.killed_at = time.monotonic()
        self.process.join(timeout=wait_s)
        self.conn.close()
        return self.process.exitcode is not None

    def describe_exit(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"killed by {_signal_name(-code)}"
        return f"exit code {code}"


@dataclass
class _Start:
    """A worker to start at monotonic time `at`; `failed_starts` failed in its place before it."""

    at: float
    failed_starts: int = 0
    #: It replaces a worker stopped by a restart: the restart waits until it serves.
    for_restart: bool = False


def _says_started(worker: _Worker, now: float) -> bool:
    """Reads what the worker has sent since the wait: its "started" may have come just after."""
    worker.read_answer(now)
    return worker.up


def restart_delay(failed_starts: int) -> float:
    """The pause before the next start after `failed_starts` (>= 1) failed ones in a row."""
    doublings = min(failed_starts - 1, 16)  # 0.5 s * 2**16 is far past the cap already
    return min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2**doublings)


def retiree(workers: list[_Worker], now: float) -> _Worker | None:
    """The worker SIGTTOU stops for good: the newest of those not serving, else the newest; never
    the last one serving. None when no worker but that one is left."""
    candidates = [w for w in workers if w.stopped_at is None]
    idle = [w for w in candidates if not w.serving(now)]
    if idle:
        return idle[-1]
    return candidates[-1] if len(candidates) > 1 else None


def may_stop(head: _Worker, others: list[_Worker], now: float) -> bool:
    """Whether a restart may stop `head` now: it is still starting (it takes no requests yet),
    or another worker serves. A worker merely late with its ping is not stopped on that ground."""
    return not head.up or any(w.serving(now) for w in others)


def restart_order(workers: list[_Worker], now: float) -> list[_Worker]:
    """The workers a SIGHUP replaces, in order: those not serving first (stopping them costs no
    capacity), then the others, oldest first."""
    queue = [w for w in workers if w.stopped_at is None]
    return sorted(queue, key=lambda w: w.serving(now))  # stable: keeps the age order


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        return f"signal {signum}"


def _on_terminal() -> bool:
    return any(os.isatty(fd) for fd in (1, 2))


class _Signals:
    """Signals to the parent, read from the wake-up socket they are written to on arrival.

    The Python handlers do nothing: the signal numbers come from the socket, which the C-level
    handler writes at once, so a signal is seen even while its Python handler has not run yet.
    """

    def __init__(self, handled: tuple[int, ...]) -> None:
        self.handled = handled
        self.reader, self._writer = socket.socketpair()
        for end in (self.reader, self._writer):
            end.setblocking(False)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, _no_op) for sig in self.handled}
        for sig in self.handled:  # the wake-up socket, not EINTR, is what ends a wait
            signal.siginterrupt(sig, False)
        previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.reader.close()
            self._writer.close()

    def take(self) -> list[int]:
        """The signals received since the last call, in order."""
        received = bytearray()
        with contextlib.suppress(BlockingIOError):
            while chunk := self.reader.recv(512):
                received += chunk
        return list(received)


class _Supervisor:
    def __init__(
        self, config: uvicorn.Config, workers: int, stop_grace_s: float, start_timeout_s: float
    ) -> None:
        self.config = config
        self.stop_grace_s = stop_grace_s
        self.start_timeout_s = start_timeout_s
        self.health_timeout = float(config.timeout_worker_healthcheck)
        self.sockets = [config.bind_socket()]
        self.scaling = not _on_terminal()
        handled = (*_STOP_SIGNALS, signal.SIGHUP, *_IGNORED_SIGNALS)
        self.signals = _Signals(handled + (_SCALING_SIGNALS if self.scaling else ()))
        self.workers: list[_Worker] = []
        self.starts = [_Start(at=0.0) for _ in range(workers)]  # places waiting for a worker
        self.stopping = False
        self.received: list[int] = []  # signals not acted on yet
        self.zombies: list[_Worker] = []  # killed, but not ended yet
        self.restart_queue: list[_Worker] = []
        self.restart_progress_at = 0.0  # when the restart last stopped a worker (or began)
        self.restart_stall_logged = False

    def run(self) -> None:
        logger.info("Started parent process [%d]", os.getpid())
        if not self.scaling:
            logger.info("On a terminal: SIGTTIN and SIGTTOU keep their job-control meaning")
        with self.signals.installed():
            try:
                while not self._stop_requested():
                    self._start_due(time.monotonic())
                    self._turn()
            finally:  # whatever ends the loop, no worker outlives the parent
                self._stop_all()
                for sock in self.sockets:
                    sock.close()
        logger.info("Stopping parent process [%d]", os.getpid())

    def _stop_requested(self) -> bool:
        """True once a stop is asked for; other signals wait for `_act_on_signals`."""
        self.received += self.signals.take()
        stop = next((s for s in self.received if s in _STOP_SIGNALS), None)
        if stop is not None and not self.stopping:
            logger.info(
                "Received %s, stopping %d worker processes", _signal_name(stop), len(self.workers)
            )
            self.stopping = True
        return self.stopping

    def _act_on_signals(self) -> None:
        received, self.received = self.received, []
        for signum in received:
            self._on_signal(signum)

    def _start_due(self, now: float) -> None:
        due = [start for start in self.starts if start.at <= now]
        self.starts = [start for start in self.starts if start.at > now]
        for start in due:
            try:
                worker = _Worker(self.config, self.sockets, start.failed_starts)
            except OSError as exc:  # no memory, processes or descriptors left: try again later
                failed = start.failed_starts + 1
                logger.error(
                    "Cannot start a worker process (%s); next try in %.1f s",
                    exc,
                    restart_delay(failed),
                )
                start.at, start.failed_starts = now + restart_delay(failed), failed
                self.starts.append(start)
                continue
            logger.debug("Started worker process [%d]", worker.pid)
            worker.for_restart = start.for_restart
            self.workers.append(worker)

    def _wait(self) -> set[object]:
        timeout = PING_INTERVAL_S / 2
        if self.starts:
            next_start = min(start.at for start in self.starts) - time.monotonic()
            timeout = max(0.0, min(timeout, next_start))
        waitables: list[object] = [self.signals.reader]
        for worker in self.workers:
            waitables += [worker.process.sentinel, worker.conn]
        return set(wait(waitables, timeout=timeout))  # type: ignore[arg-type]

    def _turn(self) -> None:
        self._act_on_signals()  # those read since the last turn's end
        self._reap_zombies(time.monotonic())
        ready = self._wait()
        running: list[_Worker] = []
        for index, worker in enumerate(self.workers):
            # Checked before each worker: a group-wide SIGTERM also ends workers still starting,
            # which must not be taken for deaths to replace.
            if self._stop_requested():
                self.workers = running + self.workers[index:]
                return
            if self._check(worker, ready, time.monotonic()):
                running.append(worker)
        self.workers = running
        if not self._stop_requested():
            self._act_on_signals()
            now = time.monotonic()
            self._start_due(now)
            self._continue_restart(now)

    def _check(self, worker: _Worker, ready: set[object], now: float) -> bool:
        """Reads, pings or replaces one worker; false when it has ended."""
        dead = worker.process.sentinel in ready or not worker.process.is_alive()
        if dead or worker.conn in ready:  # a dead worker's last words tell whether it was up
            worker.read_answer(now)
        if dead:
            self._kill(worker)
            self._replace(worker, now, why=worker.describe_exit())
        elif worker.hung(now, self.health_timeout):
            logger.warning(
                "Worker process [%d] has not answered for %.0f s; killing it",
                worker.pid,
                now - (worker.waiting_since or now),
            )
            self._kill(worker)
            self._replace(worker, now, why="silent")
        elif worker.slow_to_start(now, self.start_timeout_s) and not _says_started(worker, now):
            logger.warning(
                "Worker process [%d] has not started its app within %.0f s; killing it",
                worker.pid,
                self.start_timeout_s,
            )
            self._kill(worker)
            self._replace(worker, now, why="not started in time")
        elif worker.overdue(now, self.stop_grace_s):
            logger.warning(
                "Worker process [%d] still running %.0f s after SIGTERM; killing it",
                worker.pid,
                self.stop_grace_s,
            )
            self._kill(worker)
            self._replace(worker, now, why="killed after its stop grace")
        else:
            worker.ping_if_due(now)
            return True
        return False

    def _kill(self, worker: _Worker) -> None:
        if not worker.kill():  # still ending: reaped later, not waited for here
            self.zombies.append(worker)

    def _reap_zombies(self, now: float) -> None:
        left = []
        for zombie in self.zombies:
            if not zombie.process.is_alive():  # reaps it
                continue
            left.append(zombie)
            killed_at = zombie.killed_at or now
            if now - killed_at > ZOMBIE_REPORT_S and not zombie.reported_stuck:
                logger.error(
                    "Worker process [%d] has not ended %.0f s after SIGKILL (stuck in the kernel)",
                    zombie.pid,
                    now - killed_at,
                )
                zombie.reported_stuck = True
        self.zombies = left

    def _replace(self, worker: _Worker, now: float, *, why: str) -> None:
        """Queue the start of the successor of `worker`, which has just ended."""
        if worker.retiring:
            logger.info("Worker process [%d] stopped (one worker fewer)", worker.pid)
        elif worker.stopped_at is not None:
            logger.info("Worker process [%d] stopped for a restart", worker.pid)
            self.starts.append(_Start(at=now, for_restart=True))
        elif worker.up:
            logger.warning("Worker process [%d] died (%s); starting another", worker.pid, why)
            self.starts.append(_Start(at=now))
        else:
            failed = worker.failed_starts + 1
            delay = restart_delay(failed)
            logger.warning(
                "Worker process [%d] died before it took requests (%s); next start in %.1f s",
                worker.pid,
                why,
                delay,
            )
            self.starts.append(
                _Start(at=now + delay, failed_starts=failed, for_restart=worker.for_restart)
            )

    def _places(self) -> int:
        """Workers running or waiting to start, not counting those being retired."""
        return sum(not w.retiring for w in self.workers) + len(self.starts)

    def _on_signal(self, signum: int) -> None:
        """Any signal but a stop (see `_stop_requested`)."""
        if signum == signal.SIGHUP:
            self._on_hup()
        elif signum == signal.SIGTTIN:
            if self._places() >= MAX_WORKERS:
                logger.info("Received SIGTTIN; %d workers is the most, none added", MAX_WORKERS)
                return
            self.starts.append(_Start(at=0.0))
            logger.info("Received SIGTTIN: one worker more, %d in all", self._places())
        elif signum == signal.SIGTTOU:
            self._on_ttou()
        elif signum not in _STOP_SIGNALS:
            logger.info("Received %s; ignored", _signal_name(signum))

    def _on_hup(self) -> None:
        now = time.monotonic()
        again = " (the restart under way starts over)" if self._restart_left() else ""
        logger.info("Received SIGHUP, replacing the worker processes one at a time%s", again)
        # Every worker not already stopping is replaced, those the last restart started too: the
        # code or model may have changed again since.
        self.restart_queue = restart_order(self.workers, now)
        self.restart_progress_at, self.restart_stall_logged = now, False
        # Places waiting out a restart pause start now: the restart may bring a fix.
        for start in self.starts:
            start.at = 0.0

    def _restart_left(self) -> list[_Worker]:
        """The old workers a restart has still to stop."""
        return [w for w in self.restart_queue if w in self.workers and w.stopped_at is None]

    def _on_ttou(self) -> None:
        if self._places() <= MIN_WORKERS:
            logger.info("Received SIGTTOU; %d workers is the least, none stopped", MIN_WORKERS)
            return
        if self._restart_left():
            logger.info("Received SIGTTOU during a restart; none stopped (send it again after)")
            return
        if self.starts:  # a place waiting for its worker: drop it
            self.starts.pop()
        else:
            worker = retiree(self.workers, time.monotonic())
            if worker is None:
                logger.info("Received SIGTTOU; the last worker serving is kept, none stopped")
                return
            worker.retiring = True
            worker.stop()
        logger.info("Received SIGTTOU: one worker fewer, %d in all", self._places())

    def _continue_restart(self, now: float) -> None:
        """SIGHUP: stop one old worker at a time; a serving one only while another serves.

        `_turn` starts the successor of the worker stopped here once it has ended."""
        # Re-sorted each turn (a worker may have frozen since), from the workers' age order.
        queued = [w for w in self.workers if w in self.restart_queue]
        self.restart_queue = restart_order(queued, now)
        if not self.restart_queue:
            return
        if not self._restart_blocked(now):
            worker = self.restart_queue.pop(0)
            worker.stop()
            self.restart_progress_at, self.restart_stall_logged = now, False
        elif now - self.restart_progress_at > STALLED_RESTART_S and not self.restart_stall_logged:
            logger.warning(
                "The restart has stopped no worker for %.0f s: %d old workers wait for the "
                "others to serve (a new worker that cannot start holds it up)",
                now - self.restart_progress_at,
                len(self.restart_queue),
            )
            self.restart_stall_logged = True

    def _restart_blocked(self, now: float) -> bool:
        """One worker at a time: the last one stopped has ended and its successor serves."""
        stopping = any(w.stopped_at is not None and not w.retiring for w in self.workers)
        # A successor this restart waits for; one still in its queue (a start the last SIGHUP
        # began, which may hang on the code being replaced) is an old worker to it.
        coming = any(s.for_restart for s in self.starts) or any(
            w.for_restart and not w.up and w.stopped_at is None and w not in self.restart_queue
            for w in self.workers
        )
        if stopping or coming:
            return True
        head = self.restart_queue[0]
        return not may_stop(head, [w for w in self.workers if w is not head], now)

    def _stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        deadline = time.monotonic() + self.stop_grace_s
        # Two stop signals may have come before the stop began (read by `_stop_requested`).
        kill_now = sum(s in _STOP_SIGNALS for s in self.received) >= 2
        while not kill_now and any(w.process.exitcode is None for w in self.workers):
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning(
                    "Workers still running after %.0f s; killing them", self.stop_grace_s
                )
                break
            sentinels = [w.process.sentinel for w in self.workers if w.process.exitcode is None]
            if not wait([self.signals.reader, *sentinels], timeout=min(left, 1.0)):
                for worker in self.workers:
                    worker.stop()
            kill_now = any(s in _STOP_SIGNALS for s in self.signals.take())
        if kill_now:
            logger.warning("Second stop request; killing the workers")
        # SIGKILL to all first, then reap them against one deadline.
        ending = self.workers + self.zombies
        for worker in ending:
            worker.kill(wait_s=0.0)
        deadline = time.monotonic() + ZOMBIE_REPORT_S
        for worker in ending:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                logger.error("Worker process [%d] has not ended on SIGKILL", worker.pid)


def run_workers(
    config: uvicorn.Config,
    workers: int,
    *,
    stop_grace_s: float = STOP_GRACE_S,
    start_timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Serve `config` (an import-string app) from `workers` processes until a stop signal.

    `stop_grace_s`: how long a stopping worker may finish its requests before it is killed.
    `start_timeout_s`: how long a new worker may take to start its app before it is killed."""
    if not MIN_WORKERS <= workers <= MAX_WORKERS:
        raise ValueError(f"run_workers needs {MIN_WORKERS} to {MAX_WORKERS} workers, got {workers}")
    if not isinstance(config.app, str):
        raise ValueError("worker processes import the app: pass it as 'module:attribute'")
    if stop_grace_s <= 0:
        raise ValueError(f"stop_grace_s must be positive, got {stop_grace_s}")
    if start_timeout_s <= 0:
        raise ValueError(f"start_timeout_s must be positive, got {start_timeout_s}")
    _Supervisor(config, workers, stop_grace_s, start_timeout_s).run()
