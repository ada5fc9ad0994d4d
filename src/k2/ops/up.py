"""``k2 up``: the whole platform on one machine, supervised.

Each stage runs as its own process — ``k2 ingest`` (capture into the log), ``k2 sink``
(log into the lake), ``k2 serve`` (query API), and with ``--simulate`` the local
exchange simulator (``k2 simulate``) — so a crash in one never takes the others down
and each can also be run alone. The supervisor:

- starts them in data-path order (simulator, then ingest, sink, API);
- restarts a stage that exits unexpectedly after a capped, jittered delay
  (:class:`~k2.sources.supervisor.Backoff`), counting restarts;
- says plainly when the exchange cannot be reached (from the ingest's status file)
  and points to ``k2 up --simulate``;
- stops cleanly on Ctrl-C/SIGTERM: the ingest first (it repairs open gaps and writes
  what it holds), then waits for the sink to commit everything the log holds (up to
  ``ops.drain_timeout_s``), then stops the sink, the API and the simulator;
- writes ``<run_dir>/up.json`` (stages, pids, restarts) for ``k2 status``.

Children get SIGTERM if the supervisor itself dies (Linux ``PR_SET_PDEATHSIG``), and
the ingest's run-directory lock makes a restarted platform wait for an orphan to
finish, so a SIGKILL of ``k2 up`` followed by a restart loses nothing and writes
nothing twice: the ingest resumes after the log's last trades, the sink after the
lake's offsets.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from k2.config import Settings
from k2.ops.log import get_logger
from k2.ops.status_files import read_status, run_dir, status_path, write_status
from k2.sources.supervisor import Backoff

log = get_logger(__name__)

#: Start order; stop order is the reverse except that the ingest stops first.
STAGES = ("simulator", "ingest", "sink", "api")
_PR_SET_PDEATHSIG = 1


@dataclass
class StageSpec:
    """How to run one stage: its command line and environment overrides."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class _Stage:
    spec: StageSpec
    backoff: Backoff
    proc: subprocess.Popen[bytes] | None = None
    output: IO[bytes] | None = None
    state: str = "pending"
    restarts: int = 0
    started_at: float | None = None
    last_exit: int | None = None
    next_start: float = 0.0
    log_from: int = 0  # where this run's output starts in the stage's log file
    announced: bool = False


def stage_specs(
    settings: Settings,
    *,
    simulate: bool = False,
    simulator_port: int = 9443,
    simulator_rate: float | None = None,
    stages: Sequence[str] | None = None,
) -> list[StageSpec]:
    """The stages of ``k2 up`` for ``settings``: all of them unless ``stages`` names
    some. With ``simulate`` the capture points at a local simulator on
    ``simulator_port`` instead of Binance."""
    chosen = [
        s for s in STAGES if (stages is None or s in stages) and (s != "simulator" or simulate)
    ]
    unknown = set(stages or ()) - set(STAGES)
    if unknown:
        from k2.errors import ConfigError

        raise ConfigError(f"unknown stage(s) {sorted(unknown)}: choose from {', '.join(STAGES)}")
    k2 = [sys.executable, "-m", "k2"]
    env: dict[str, str] = {"K2_DATA_DIR": str(settings.data_dir)}
    if simulate:
        env["K2_BINANCE__WS_URL"] = f"ws://127.0.0.1:{simulator_port}"
        env["K2_BINANCE__REST_URL"] = f"http://127.0.0.1:{simulator_port}"
    sim_args = ["simulate", "--port", str(simulator_port), "--seed", "1", "--continue-ids"]
    if simulator_rate is not None:
        sim_args += ["--rate", str(simulator_rate)]
    argv = {
        "simulator": [*k2, *sim_args],
        "ingest": [*k2, "ingest"],
        "sink": [*k2, "sink"],
        "api": [*k2, "serve"],
    }
    return [StageSpec(name, argv[name], dict(env)) for name in chosen]


#: Set in a stage's environment: the supervisor's pid (see :func:`die_with_supervisor`).
SUPERVISOR_ENV = "K2_SUPERVISOR_PID"


def die_with_supervisor() -> None:
    """In a stage started by ``k2 up``: ask the kernel for SIGTERM when the supervisor
    dies (Linux ``PR_SET_PDEATHSIG``), and stop at once if it already has. Called at
    the start of every ``k2`` command; a no-op elsewhere. Done here rather than in a
    ``preexec_fn``, which is not safe in a process that runs threads."""
    expected = os.environ.get(SUPERVISOR_ENV)
    if not expected or sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != expected:  # the supervisor died before the request took
        raise SystemExit(f"k2 up (pid {expected}) is gone; not starting")


class Platform:
    """Runs and supervises ``specs`` until stopped (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        specs: Sequence[StageSpec],
        *,
        say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._say = say
        self._clock = clock
        ops = settings.ops
        self._stages = [
            _Stage(
                spec, Backoff(ops.restart_initial_s, max(ops.restart_max_s, ops.restart_initial_s))
            )
            for spec in specs
        ]
        self._run_dir = run_dir(settings)
        self._started = clock()
        self._warned_exchange_at: float | None = None
        self._connected_at: float | None = None
        self.stopping = False

    # -- running -------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, max_seconds: float | None = None) -> None:
        """Start every stage and supervise until ``stop`` is set or ``max_seconds``
        pass; then stop them all cleanly."""
        self._run_dir.mkdir(parents=True, exist_ok=True)
        try:
            for stage in self._stages:
                self._start(stage)
            end = None if max_seconds is None else self._clock() + max_seconds
            interval = min(self._settings.ops.status_interval_s, 0.5)
            while not stop.wait(interval):
                if end is not None and self._clock() >= end:
                    break
                self.supervise()
        finally:
            self.shutdown()

    def supervise(self) -> None:
        """One supervision round: restart exited stages when due, write ``up.json``,
        warn if the exchange cannot be reached."""
        now = self._clock()
        for stage in self._stages:
            proc = stage.proc
            if proc is not None and proc.poll() is not None:
                self._exited(stage, proc.returncode)
            if stage.proc is None and stage.state == "backoff" and now >= stage.next_start:
                stage.restarts += 1
                self._start(stage)
            elif (
                stage.state == "running"
                and stage.started_at is not None
                and now - stage.started_at > 60
            ):
                stage.backoff.reset()  # healthy for a minute: next crash restarts fast
        self._check_exchange(now)
        self._announce_api()
        self._write()

    def _start(self, stage: _Stage) -> None:
        spec = stage.spec
        logfile = self._run_dir / f"{spec.name}.log"
        stage.output = logfile.open("ab")
        stage.log_from = stage.output.tell()
        stage.announced = False
        env = {**os.environ, **spec.env, SUPERVISOR_ENV: str(os.getpid())}
        stage.proc = subprocess.Popen(
            spec.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stage.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the supervisor, which orders stops
        )
        stage.state = "running"
        stage.started_at = self._clock()
        self._say(f"started {spec.name} (pid {stage.proc.pid}; output in {logfile})")

    def _exited(self, stage: _Stage, code: int) -> None:
        stage.last_exit = code
        stage.proc = None
        if stage.output is not None:
            stage.output.close()
        if self.stopping:
            stage.state = "stopped"
            return
        delay = stage.backoff.next_delay()
        stage.state = "backoff"
        stage.next_start = self._clock() + delay
        tail = _last_line(self._run_dir / f"{stage.spec.name}.log")
        self._say(
            f"{stage.spec.name} exited with code {code}"
            + (f": {tail}" if tail else "")
            + f"; restarting in {delay:.1f} s"
        )

    def _announce_api(self) -> None:
        """Once per API start: where it listens, and its development key if it made
        one (the key is in the API's own output, which the user does not see)."""
        api = next((s for s in self._stages if s.spec.name == "api"), None)
        if api is None or api.proc is None or api.announced:
            return
        try:
            with (self._run_dir / "api.log").open("rb") as fh:
                fh.seek(api.log_from)
                text = fh.read(65536).decode(errors="replace")
        except OSError:
            return
        waited = self._clock() - (api.started_at or self._clock())
        if "Uvicorn running on" not in text and "X-API-Key:" not in text and waited < 5:
            return
        api.announced = True
        port = api.spec.env.get("K2_API__PORT") or str(self._settings.api.port)
        line = f"API at http://{self._settings.api.host}:{port} (docs at /docs)"
        key = next((ln.strip() for ln in text.splitlines() if "X-API-Key:" in ln), None)
        self._say(line + (f"; development key, valid while it runs: {key}" if key else ""))

    def _check_exchange(self, now: float) -> None:
        ingest = next((s for s in self._stages if s.spec.name == "ingest"), None)
        if ingest is None or ingest.started_at is None:
            return
        status = read_status(status_path(self._settings, "ingest"))
        connected = bool(status and status.get("connections", 0) > 0)
        if connected:
            self._warned_exchange_at = None
            self._connected_at = now
            return
        # Not connected since the ingest started or last had a connection (a forced
        # reconnect is seconds, not a reason to warn).
        waited = now - max(ingest.started_at, self._connected_at or 0.0)
        due = self._warned_exchange_at is None or now - self._warned_exchange_at > 60
        if waited > self._settings.ops.exchange_warn_after_s and due:
            self._warned_exchange_at = now
            url = ingest.spec.env.get("K2_BINANCE__WS_URL", self._settings.binance.ws_url)
            self._say(
                f"cannot reach the exchange at {url} (not connected after {waited:.0f} s); "
                "still retrying with backoff. No access to Binance from here? "
                "Run `k2 up --simulate` to use K2's local exchange simulator instead."
            )

    # -- stopping ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every stage in order; a stage that outlives ``ops.stop_timeout_s`` is
        killed (whatever it had not made durable is resumed from on the next start)."""
        self.stopping = True
        order = {"ingest": 0, "sink": 1, "api": 2, "simulator": 3}
        for stage in sorted(self._stages, key=lambda s: order[s.spec.name]):
            if stage.spec.name == "sink" and stage.proc is not None:
                self._drain()
            self._stop(stage)
        self._write()

    def _stop(self, stage: _Stage) -> None:
        proc = stage.proc
        if proc is None:
            stage.state = "stopped"
            return
        self._say(f"stopping {stage.spec.name} …")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(self._settings.ops.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self._say(f"{stage.spec.name} did not stop in time; killing it")
            proc.kill()
            code = proc.wait()
        self._exited(stage, code)

    def _drain(self) -> None:
        """Wait until the lake holds everything the log does (the sink commits on its
        own cadence), at most ``ops.drain_timeout_s``."""
        from k2.ops.status import lake_lag

        deadline = self._clock() + self._settings.ops.drain_timeout_s
        announced = False
        while True:
            try:
                lag = sum(lake_lag(self._settings).values())
            except Exception as exc:  # a broken lake must not block the shutdown
                self._say(f"cannot read the lake's position ({exc}); stopping the sink now")
                return
            if lag == 0:
                return
            if self._clock() > deadline:
                self._say(f"{lag:,} records still in the log only; the next start commits them")
                return
            if not announced:
                self._say(f"waiting for the sink to commit {lag:,} records …")
                announced = True
            time.sleep(0.2)  # polling the lake's position: there is no change notification

    # -- status --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The supervisor's view, as written to ``up.json``."""
        now = self._clock()
        return {
            "stage": "up",
            "uptime_s": round(now - self._started, 1),
            "stopping": self.stopping,
            "stages": {
                s.spec.name: {
                    "state": s.state,
                    "pid": s.proc.pid if s.proc is not None else None,
                    "restarts": s.restarts,
                    "last_exit": s.last_exit,
                    "up_s": round(now - s.started_at, 1)
                    if s.proc is not None and s.started_at is not None
                    else None,
                }
                for s in self._stages
            },
        }

    def _write(self) -> None:
        try:
            write_status(self._run_dir / "up.json", self.describe())
        except OSError as exc:
            log.warning("cannot write up.json", error=str(exc))


def _last_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a stage's output (its error, usually)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode(errors="replace")
            lines = [ln for ln in text.splitlines() if ln.strip() and "X-API-Key" not in ln]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""
