"""The worker supervisor of `ctit serve --workers N` (serving.http.workers), on a tiny real app.

Each test starts the supervisor in its own process (it installs signal handlers and blocks), with
real uvicorn workers serving a small ASGI app written to a temporary folder: `/pid` names the
worker, `/die` ends it, `/freeze` stops it with SIGSTOP (it can then answer nothing), `/hang`
blocks its event loop (it can then not shut down). The app can take a while to import
(`TINY_APP_DELAY_S`), like the real app loading its model, fails to import while the file
`TINY_APP_FAIL_FLAG` exists, and hangs in its import while `TINY_APP_HANG_FLAG` exists.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pty
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_APP = """
import os, signal, time
from pathlib import Path

time.sleep(float(os.environ.get("TINY_APP_DELAY_S", "0")))
if Path(os.environ["TINY_APP_FAIL_FLAG"]).exists():
    raise RuntimeError("tiny_app cannot start")
while Path(os.environ["TINY_APP_HANG_FLAG"]).exists():
    time.sleep(0.1)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/die":
        os._exit(3)
    if scope["path"] == "/freeze":
        os.kill(os.getpid(), signal.SIGSTOP)
    if scope["path"] == "/hang":  # blocks the event loop: the worker cannot shut down
        time.sleep(3600)
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"""

# A script file, not `-c`: a spawned worker runs it again as `__mp_main__` before anything else,
# so TINY_MAIN_DELAY_S holds a new worker back before its ping thread exists.
_SUPERVISOR = """
import os, sys, time

if __name__ == "__mp_main__":
    time.sleep(float(os.environ.get("TINY_MAIN_DELAY_S", "0")))

if __name__ == "__main__":
    import uvicorn
    from serving.http.workers import run_workers

    port, workers = int(sys.argv[1]), int(sys.argv[2])
    health, grace, start_timeout = map(float, sys.argv[3:6])
    config = uvicorn.Config("tiny_app:app", port=port, workers=workers, log_level="info",
                            timeout_worker_healthcheck=health)
    run_workers(config, workers, stop_grace_s=grace, start_timeout_s=start_timeout)
"""


class Service:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def get(self, path: str, timeout: float = 5) -> str | None:
        """One request on a new connection; None when nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def workers(self) -> set[int]:
        """The worker processes: the parent's children started by multiprocessing's spawn."""
        pids: set[int] = set()
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in (task / "children").read_text().split()}
        return {p for p in pids if b"spawn_main" in _cmdline(p)}

    def wait_until(self, what: str, check, timeout: float = 60) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not check():
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, f"{what}:\n{self.text()}"
            time.sleep(0.1)

    def wait_ready(self) -> None:
        """Two workers run, both have started their app, and the service answers."""
        self.wait_until("two workers started", lambda: len(self.workers()) == 2)
        self.wait_until(
            "both apps started", lambda: self.text().count("Application startup complete") >= 2
        )
        self.wait_until("the service answers", lambda: self.get("/pid") is not None)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has been stopped but not reaped yet
    return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    (tmp_path / "tiny_app.py").write_text(_APP)
    (tmp_path / "supervisor.py").write_text(_SUPERVISOR)
    started: list[Service] = []
    terminals: list[int] = []

    def _start(
        workers: int = 2,
        health_s: float = 60,
        delay_s: float = 0,
        main_delay_s: float = 0,
        grace_s: float = 25,
        start_timeout_s: float = 300,
        stdout_terminal: bool = False,
    ) -> Service:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "PYTHONPATH": str(tmp_path),
            "TINY_APP_DELAY_S": str(delay_s),
            "TINY_MAIN_DELAY_S": str(main_delay_s),
            "TINY_APP_FAIL_FLAG": str(tmp_path / "fail"),
            "TINY_APP_HANG_FLAG": str(tmp_path / "hang"),
        }
        log = tmp_path / f"supervisor-{len(started)}.log"
        script = [str(tmp_path / "supervisor.py"), str(port), str(workers), str(health_s)]
        terminal: int | None = None
        if stdout_terminal:  # standard output on a pseudo-terminal, the log on stderr only
            controller, terminal = pty.openpty()
            terminals.extend((controller, terminal))
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, *script, str(grace_s), str(start_timeout_s)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink if terminal is None else terminal,
                stderr=sink,
                start_new_session=True,
            )
        service = Service(proc, port, log)
        started.append(service)
        return service

    yield _start
    for service in started:  # whatever a failed test left running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.proc.pid, signal.SIGKILL)
    for fd in terminals:
        os.close(fd)
        service.proc.wait(timeout=30)


def _stop(service: Service, *, group: bool = False, within_s: float = 20) -> set[int]:
    """SIGTERM (to the parent, or to the whole process group as a terminal or a test does)."""
    workers = service.workers()
    if group:
        os.killpg(service.proc.pid, signal.SIGTERM)
    else:
        service.proc.send_signal(signal.SIGTERM)
    try:
        service.proc.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no stop within {within_s} s:\n{service.text()}") from None
    return workers


def test_workers_serve_and_stop_together_on_sigterm(start) -> None:  # noqa: ANN001
    service = start(workers=2)
    service.wait_ready()
    answered = int(service.get("/pid") or 0)
    workers = _stop(service)
    assert answered in workers
    assert service.proc.returncode == 0
    assert not [pid for pid in workers if _alive(pid)], "a worker outlived its parent"
    assert "Stopping parent process" in service.text()


def test_sigterm_while_workers_are_still_starting_stops_at_once(start) -> None:  # noqa: ANN001
    # The new workers spend 4 s re-running the main script, before their ping thread exists, and
    # have 60 s to answer their first ping. uvicorn's supervisor blocked on such a worker's ping
    # for the whole 60 s, even after the group SIGTERM had killed it, before it looked at the
    # signal (the CI failure of stop 25); here the stop waits only for the workers' own exit.
    service = start(workers=2, health_s=60, main_delay_s=4)
    service.wait_until("two workers started", lambda: len(service.workers()) == 2)
    _stop(service, group=True, within_s=30)
    assert "died" not in service.text(), "a worker stopped by the signal was restarted"


def test_sigterm_is_acted_on_while_a_worker_does_not_answer_its_ping(start) -> None:  # noqa: ANN001
    # uvicorn's supervisor blocked on the silent worker's ping for the whole health-check timeout
    # (60 s) before it even looked at the signal.
    service = start(workers=2, health_s=60)
    service.wait_ready()
    workers = service.workers()
    assert service.get("/freeze", timeout=1) is None
    service.wait_until("one worker is stopped", lambda: len(_frozen(workers)) == 1, timeout=10)
    time.sleep(1.5)  # a ping to the frozen worker is now outstanding
    service.proc.send_signal(signal.SIGTERM)
    service.wait_until(
        "the parent acts on SIGTERM", lambda: "Received SIGTERM" in service.text(), timeout=10
    )
    os.kill(_frozen(workers)[0], signal.SIGCONT)  # now it can take its SIGTERM
    _stop(service)
    assert not [pid for pid in workers if _alive(pid)], "a worker outlived its parent"


def _frozen(pids: set[int]) -> list[int]:
    return [p for p in pids if "\nState:\tT" in Path(f"/proc/{p}/status").read_text()]


def test_a_worker_that_dies_is_replaced_and_the_others_keep_answering(start) -> None:  # noqa: ANN001
    service = start(workers=2)
    service.wait_ready()
    before = service.workers()
    assert service.get("/die") is None  # that worker ended without an answer
    service.wait_until(
        "a replacement worker",
        lambda: len(service.workers()) == 2 and service.workers() != before,
    )
    assert len(service.workers() & before) == 1, "only the worker that died is replaced"
    assert "died (exit code 3); starting another" in service.text()
    service.wait_until("the service answers", lambda: service.get("/pid") is not None)
    _stop(service)


@pytest.mark.parametrize("path", ["/freeze", "/hang"], ids=["stopped", "event-loop-blocked"])
def test_a_worker_that_stops_answering_pings_is_killed_and_replaced(start, path) -> None:  # noqa: ANN001
    # /freeze: SIGSTOP, it answers nothing any more. /hang: its event loop is blocked for good
    # (the ping is answered on the event loop, so this counts as not answering).
    service = start(workers=2, health_s=2)
    service.wait_ready()
    before = service.workers()
    assert service.get(path, timeout=1) is None
    service.wait_until(
        "the frozen worker is replaced",
        lambda: len(service.workers()) == 2 and service.workers() != before,
    )
    assert len(service.workers() & before) == 1, "only the frozen worker is replaced"
    assert service.text().count("has not answered for") == 1
    _stop(service)


@pytest.mark.parametrize("group", [False, True], ids=["parent", "process-group"])
def test_sighup_replaces_the_workers_one_at_a_time_without_an_outage(start, group) -> None:  # noqa: ANN001
    # Sent to the whole group (as `kill -HUP -- -PGID` does), the workers ignore it and the
    # parent's rolling restart is the only effect.
    service = start(workers=2, delay_s=3)
    service.wait_ready()
    before = service.workers()
    if group:
        os.killpg(service.proc.pid, signal.SIGHUP)
    else:
        service.proc.send_signal(signal.SIGHUP)
    longest_gap = _longest_gap_until(
        service, lambda: len(service.workers()) == 2 and not service.workers() & before
    )
    # Each old worker is stopped only once the other takes requests, so one always answers; a
    # replacement takes at least its 3 s import, so stopping both at once would leave a gap.
    assert longest_gap < 1.0, f"no answer for {longest_gap:.1f} s during the restart"
    assert service.text().count("stopped for a restart") == 2
    assert "died" not in service.text()
    _stop(service)


def test_a_worker_that_does_not_finish_after_sighup_is_killed_after_the_grace(start) -> None:  # noqa: ANN001
    service = start(workers=2, grace_s=2)
    service.wait_ready()
    before = service.workers()
    assert service.get("/hang", timeout=1) is None  # that worker's event loop is blocked for good
    service.proc.send_signal(signal.SIGHUP)
    service.wait_until(
        "both workers replaced",
        lambda: len(service.workers()) == 2 and not service.workers() & before,
    )
    assert service.text().count("still running 2 s after SIGTERM; killing it") == 1
    assert service.text().count("stopped for a restart") == 2
    _stop(service)


def test_a_worker_that_cannot_start_is_retried_after_growing_pauses(start, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "fail").touch()  # the app raises on import
    service = start(workers=2)
    service.wait_until(
        "a 2 s pause before a start", lambda: "next start in 2.0 s" in service.text()
    )
    # Pauses of 0.5, 1 and 2 s: when the first place reaches 2 s, each place has failed at most
    # three times (restarting at once would have spun through fresh interpreters meanwhile).
    text = service.text()
    assert "next start in 0.5 s" in text and "next start in 1.0 s" in text
    assert text.count("died before it took requests (exit code 1)") <= 6
    (tmp_path / "fail").unlink()  # fixed: the next start of each place succeeds
    service.wait_ready()
    _stop(service)
    assert service.proc.returncode == 0


def test_a_worker_process_that_cannot_be_created_is_retried_and_the_others_serve(start) -> None:  # noqa: ANN001
    service = start(workers=2)
    service.wait_ready()
    before = service.workers()
    # The parent may open no new file descriptor (a real EMFILE, set from outside by prlimit):
    # the replacement's pipe, and so the new process, cannot be made.
    limits = resource.prlimit(service.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(service.proc.pid, resource.RLIMIT_NOFILE, (3, limits[1]))
    try:
        assert service.get("/die") is None
        service.wait_until(
            "two failed creations, 0.5 s then 1 s apart",
            lambda: (
                "Cannot start a worker process" in service.text()
                and "next try in 1.0 s" in service.text()
            ),
        )
        assert "Too many open files" in service.text()
        assert len(service.workers()) == 1, "the failure is retried later, not in a loop"
        assert service.get("/pid") is not None, "the other worker keeps serving"
    finally:
        resource.prlimit(service.proc.pid, resource.RLIMIT_NOFILE, limits)
    service.wait_until(
        "a replacement once descriptors are free again",
        lambda: len(service.workers()) == 2 and service.workers() != before,
    )
    service.wait_ready()
    _stop(service)
    assert service.proc.returncode == 0


def test_a_worker_whose_app_start_hangs_is_killed_and_retried(start, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "hang").touch()  # the app's import never ends (it still answers "starting")
    service = start(workers=2, start_timeout_s=2)
    service.wait_until(
        "a worker killed for not starting",
        lambda: "has not started its app within 2 s; killing it" in service.text(),
        timeout=30,
    )
    service.wait_until(
        "its place retried after a pause",
        lambda: (
            "died before it took requests (not started in time); next start in" in service.text()
        ),
        timeout=30,
    )
    (tmp_path / "hang").unlink()  # the import finishes: the next start of each place succeeds
    service.wait_ready()
    started = service.workers()
    time.sleep(3)  # past the start timeout: workers that have started are not killed for it
    assert service.workers() == started and service.get("/pid") is not None
    _stop(service)
    assert service.proc.returncode == 0


def test_ttin_ttou_change_the_worker_count_and_usr1_is_ignored(start) -> None:  # noqa: ANN001
    service = start(workers=2)
    service.wait_ready()
    service.proc.send_signal(signal.SIGTTIN)
    service.wait_until("three workers", lambda: len(service.workers()) == 3)
    service.proc.send_signal(signal.SIGTTOU)
    service.wait_until("two workers", lambda: len(service.workers()) == 2)
    service.proc.send_signal(signal.SIGTTOU)
    service.wait_until("two are kept", lambda: "2 workers is the least" in service.text())
    service.proc.send_signal(signal.SIGUSR1)
    service.wait_until("SIGUSR1 logged", lambda: "Received SIGUSR1; ignored" in service.text())
    assert len(service.workers()) == 2
    assert service.get("/pid") is not None
    assert "died" not in service.text()
    _stop(service)
    assert service.proc.returncode == 0


def test_a_group_sigquit_stops_each_worker_once_and_gracefully(start) -> None:  # noqa: ANN001
    # Ctrl-\\ in a terminal: the parent stops the service; the workers ignore the signal (its
    # default would dump core) and take the parent's SIGTERM instead.
    service = start(workers=2)
    service.wait_ready()
    workers = service.workers()
    os.killpg(service.proc.pid, signal.SIGQUIT)
    service.proc.wait(timeout=20)
    assert service.proc.returncode == 0
    assert "Received SIGQUIT, stopping 2 worker processes" in service.text()
    assert service.text().count("Finished server process") == 2
    assert not [pid for pid in workers if _alive(pid)], "a worker outlived its parent"


def _tracker(service: Service) -> int | None:
    """multiprocessing's resource tracker, a child of the parent."""
    pids = Path(f"/proc/{service.proc.pid}/task/{service.proc.pid}/children").read_text().split()
    return next((int(p) for p in pids if b"resource_tracker" in _cmdline(int(p))), None)


def test_signals_for_the_parent_do_not_end_workers_that_are_still_starting(start) -> None:  # noqa: ANN001
    # The workers spend 3 s re-running the main script, before any handler of theirs exists;
    # SIGUSR1 and SIGUSR2 (whose default action ends a process) sent to the whole group then
    # stay blocked until the worker handles them, and end neither a worker nor the tracker.
    service = start(workers=2, main_delay_s=3)
    service.wait_until("two workers started", lambda: len(service.workers()) == 2)
    starting, tracker = service.workers(), _tracker(service)
    assert tracker is not None
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        os.killpg(service.proc.pid, sig)
    service.wait_ready()
    assert service.workers() == starting, service.text()
    assert _alive(tracker), "the resource tracker was ended"
    assert "died" not in service.text()
    _stop(service)


def test_sighup_replaces_a_frozen_worker_first_without_an_outage(start) -> None:  # noqa: ANN001
    # One worker is frozen (its ping outstanding, so it is not counted on); the restart must not
    # stop the healthy one first, which would leave nobody to answer while its successor loads.
    service = start(workers=2, delay_s=2, grace_s=3)
    service.wait_ready()
    before = service.workers()
    assert service.get("/freeze", timeout=1) is None
    service.wait_until("one worker is stopped", lambda: len(_frozen(before)) == 1, timeout=10)
    frozen = _frozen(before)[0]
    time.sleep(4)  # a ping to it has now waited over 2 s (pings go out each second)
    service.proc.send_signal(signal.SIGHUP)
    longest_gap = _longest_gap_until(
        service, lambda: len(service.workers()) == 2 and not service.workers() & before
    )
    assert longest_gap < 1.0, f"no answer for {longest_gap:.1f} s during the restart"
    log = service.text()
    assert f"[{frozen}] still running 3 s after SIGTERM" in log
    (healthy,) = before - {frozen}
    first, second = (f"[{pid}] stopped for a restart" for pid in (frozen, healthy))
    assert log.index(first) < log.index(second), log
    _stop(service)


def test_a_sighup_during_a_restart_starts_it_over(start) -> None:  # noqa: ANN001
    service = start(workers=2, delay_s=2)
    service.wait_ready()
    service.proc.send_signal(signal.SIGHUP)
    service.wait_until("one worker replaced", lambda: "stopped for a restart" in service.text())
    service.wait_until("its successor started", lambda: len(service.workers()) == 2)
    at_second = service.workers()  # the one the restart started already, and the other
    service.proc.send_signal(signal.SIGHUP)
    service.wait_until(
        "every worker newer than the second SIGHUP",
        lambda: len(service.workers()) == 2 and not service.workers() & at_second,
        timeout=90,
    )
    assert "the restart under way starts over" in service.text()
    _stop(service)


def _longest_gap_until(service: Service, done, timeout: float = 90) -> float:  # noqa: ANN001
    """Polls the service until `done()`; the longest time it went without an answer."""
    last_answer = time.monotonic()
    longest_gap = 0.0
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done in {timeout} s:\n{service.text()}"
        if service.get("/pid", timeout=2) is not None:
            now = time.monotonic()
            longest_gap = max(longest_gap, now - last_answer)
            last_answer = now
        time.sleep(0.05)
    return longest_gap


def test_two_stop_signals_at_once_kill_without_waiting_for_the_grace(start) -> None:  # noqa: ANN001
    # A worker whose event loop is blocked cannot finish its graceful stop (20 s grace here).
    # SIGTERM and SIGINT back to back (two different signals, so the kernel cannot merge them)
    # reach the parent before its stop begins: that is a second stop request, acted on at once.
    service = start(workers=2, grace_s=20)
    service.wait_ready()
    assert service.get("/hang", timeout=1) is None
    service.proc.send_signal(signal.SIGTERM)
    service.proc.send_signal(signal.SIGINT)
    try:
        service.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no stop within 10 s:\n{service.text()}") from None
    assert "Second stop request; killing the workers" in service.text()


def test_on_a_terminal_sigttin_and_sigttou_do_not_scale_the_workers(start) -> None:  # noqa: ANN001
    # A handled SIGTTOU would make a background write to a `stty tostop` terminal retry forever,
    # so with standard output on a terminal the parent leaves both signals to job control (here,
    # in a process group without a controlling terminal, the kernel discards them).
    service = start(workers=2, stdout_terminal=True)
    service.wait_ready()
    assert "SIGTTIN and SIGTTOU keep their job-control meaning" in service.text()
    workers = service.workers()
    for sig in (signal.SIGTTIN, signal.SIGTTOU):
        service.proc.send_signal(sig)
    time.sleep(1)  # pending signals go in number order: USR1 (10) would overtake TTIN (21)
    service.proc.send_signal(signal.SIGUSR1)  # handled: its log line shows the others were seen
    service.wait_until("SIGUSR1 logged", lambda: "Received SIGUSR1; ignored" in service.text())
    assert service.workers() == workers
    assert "SIGTTIN" not in service.text().split("job-control meaning", 1)[1]
    _stop(service)
    assert service.proc.returncode == 0
