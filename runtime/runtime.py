"""Runtime: assembles the actor tree in one place, starts it in dependency order and
stops it in reverse; the user's handle on a running runtime."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pykka

from runtime.callbacks import CallbackRunner
from runtime.clock import Clock, SystemClock
from runtime.config import Settings, load_settings
from runtime.errors import (ConfigError, InvalidArguments, JobNotFound, RuntimeStopped, ScriptNotFound,
                            SupervisorEscalated)
from runtime.executors import validate_arguments
from runtime.messages import AcceptJobs, ForgetWaiter, InjectFault
from runtime.pools import ConnectionPools
from runtime.registry import RegistryFile, Script, load_registry
from runtime.registry_cache import CacheMemory, CacheView, ViewHits
from runtime.scheduling import (SchedulerMemory, check_callbacks, check_max_retries, check_wait_timeout,
                                checked_jobs, new_job, priority_level)
from runtime.start_marks import marks_folder
from runtime.stats import StatsAccumulator
from runtime.store import JobStore, claim_folder
from runtime.submit_journal import SubmitJournal
from runtime.supervision import Backoff, ChildSpec, RestartPolicy

from actors.base import ActorContext, Directory, tell_ref
from actors.cache import CacheActor
from actors.scheduler import SchedulerActor
from actors.stats import StatsActor
from actors.supervisor import SupervisorActor
from actors.watcher import WatcherActor
from actors.worker import WorkerActor

__all__ = ["Runtime"]

logger = logging.getLogger(__name__)


class Runtime:
    """A running actor tree: Supervisor -> StatsActor, CacheActor, WatcherActor,
    SchedulerActor and ``job_concurrency`` WorkerActors.

    Use :meth:`start`, then :meth:`submit` / :meth:`status` / :meth:`wait_job`, the
    proxies (``rt.cache``, ``rt.scheduler``, ``rt.stats``, ``rt.watcher``) and
    :meth:`stop` (or ``with Runtime.start(...) as rt:``).
    """

    def __init__(self, settings: Settings, clock: Clock | None = None,
                 inotify_factory: Callable[..., Any] | None = None,
                 store_factory: Callable[[], JobStore] | None = None,
                 retry_rng: Callable[[], float] | None = None, pools: ConnectionPools | None = None) -> None:
        self.settings = settings
        #: The connection pools of ``http`` and ``sql`` scripts (closed by ``stop`` unless given).
        self.pools = pools if pools is not None else ConnectionPools()
        self._owns_pools = pools is None
        self.clock: Clock = clock or SystemClock()
        self._owns_clock = clock is None
        self.directory = Directory()
        self.cache_view = CacheView()
        # For the scheduler's own checks (its thread only): never an ask from its handler.
        self._registry_file = RegistryFile(settings.registry_path, lambda: self._cache_memory.last_good)
        # Lookups served from the view (``script``, every submit) count as the cache's hits.
        self._view_hits = ViewHits(lambda hits: self.ref("cache").tell(hits))
        self._stats = StatsAccumulator()
        self._cache_memory = CacheMemory()
        self._scheduler_memory = SchedulerMemory()
        self._inotify_factory = inotify_factory
        self._store_factory = store_factory
        # Start marks go with the SQLite store in job_storage_path (see runtime/start_marks.py).
        self._marks = None if store_factory else marks_folder(Path(self.settings.job_storage_path or ".jobs"))
        self._retry_rng = retry_rng
        self._folder_lock: int | None = None  # the default store's folder, held while running
        # With the default store, submits go through the journal (runtime/submit_journal.py).
        self._journal: SubmitJournal | None = None
        self.callbacks = CallbackRunner()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._lifecycle = threading.Lock()  # guards start/stop of this handle, not actor state
        self._blocked: dict[object, _Wait] = {}  # those waiting for jobs (waiting())
        self._blocked_lock = threading.Lock()
        self._stop_begun = False
        self._resize_lock = threading.Lock()
        self._escalation: str | None = None
        self._supervisor: pykka.ActorRef[Any] | None = None
        self._proxies: dict[str, Any] = {}

    # --- lifecycle --------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        registry_path: str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        inotify_factory: Callable[..., Any] | None = None,
        store_factory: Callable[[], JobStore] | None = None,
        retry_rng: Callable[[], float] | None = None,
        pools: ConnectionPools | None = None,
        **settings: Any,
    ) -> Runtime:
        """Build and start the actor tree.

        Args:
            registry_path: the registry file (else ``REGISTRY_PATH``, else ``./registry.json``).
            clock: the clock (a ``ManualClock`` in tests); real time by default.
            env: the environment to read settings from (``os.environ`` by default).
            inotify_factory: replaces the inotify backend (tests simulate its absence).
            store_factory: opens the job store (default: SQLite under ``job_storage_path``;
                ``runtime.store.MemoryStore`` keeps nothing on disk).
            retry_rng: jitter source of the job retry backoff (tests fix it).
            pools: connection pools to share (the caller keeps and closes them);
                by default the runtime makes its own, reachable as ``rt.pools``.
            **settings: any field of :class:`~runtime.config.Settings`.

        Raises:
            ConfigError: an invalid setting.
            RegistryError: the registry is invalid (nothing is started).
            SupervisorEscalated: an actor kept failing during start-up.
            StoreError: another runtime uses the same ``job_storage_path`` (or it cannot be opened).
        """
        if settings.get("redis_url"):  # asked for in so many words: do not run without it
            raise ConfigError("redis_url: the Redis backend is not available yet in this version")
        resolved = load_settings(env, registry_path=registry_path, **settings)
        if resolved.redis_url:  # REDIS_URL: maybe set for something else; say what it does not do
            logger.warning("REDIS_URL is set, but this version keeps its cache and job queue local "
                           "(the Redis backend is not available yet)")
        resolved = _absolute_registry(resolved)
        load_registry(resolved.registry_path)  # a bad registry is the user's error: say it now
        runtime = cls(resolved, clock, inotify_factory, store_factory, retry_rng, pools)
        runtime._start()
        return runtime

    def _start(self) -> None:
        try:
            if self._store_factory is None:  # one runtime per store folder: say so now, not by running jobs twice
                folder = Path(self.settings.job_storage_path or ".jobs")
                self._folder_lock = claim_folder(folder)
                self._journal = SubmitJournal(folder)
            self._start_tree()
        except BaseException:
            self.stop()  # the threads made so far, and the folder
            raise

    def _start_tree(self) -> None:
        if self.settings.database_url and "default" not in self.pools.names():
            # minconn=0: a database that is down at start-up fails the sql jobs (which
            # retry), not the runtime.
            self.pools.init_postgres_pool(dsn=self.settings.database_url, minconn=0)
        policy = RestartPolicy(
            self.settings.max_restarts,
            self.settings.restart_window,
            Backoff(self.settings.backoff_min, self.settings.backoff_max),
            self.settings.backoff_reset,
        )
        self._supervisor = SupervisorActor.start(
            self._child_specs(), policy, self.clock, self.directory, self._ready, self._escalated
        )
        deadline = self.settings.ask_timeout
        if not self._ready.wait(deadline):
            self.stop()
            raise RuntimeStopped(f"the actor tree did not start within {deadline:g} s")
        if self._escalation is not None:
            self.stop()
            raise SupervisorEscalated(self._escalation)
        atexit.register(self.stop)
        logger.info("runtime started on %s", self.settings.registry_path)

    def _context_factory(self) -> Callable[[str], ActorContext]:
        settings = self.settings

        def context(name: str) -> ActorContext:
            return ActorContext(name, settings, self.clock, self.directory)

        return context

    def _child_specs(self) -> list[ChildSpec]:
        context = self._context_factory()

        watcher_args: dict[str, Any] = {}
        if self._inotify_factory is not None:
            watcher_args["inotify_factory"] = self._inotify_factory
        return [
            ChildSpec("stats", lambda: StatsActor.start(context("stats"), self._stats)),
            ChildSpec("cache", lambda: CacheActor.start(context("cache"), self._cache_memory, self.cache_view)),
            ChildSpec("watcher", lambda: WatcherActor.start(context("watcher"), **watcher_args)),
            ChildSpec("scheduler", lambda: SchedulerActor.start(
                context("scheduler"), self.callbacks, self._store_factory, self._retry_rng, self._scheduler_memory,
                self._marks, self._journal, check=self._scheduler_check, current=self._script_now)),
            *[self._worker_spec(f"worker-{i}", context) for i in range(self.settings.job_concurrency)],
        ]

    def _worker_spec(self, name: str, context: Callable[[str], ActorContext]) -> ChildSpec:
        return ChildSpec(name, lambda: WorkerActor.start(context(name), self.pools, self._marks))

    def _escalated(self, text: str) -> None:
        # Called on the supervisor's thread: record, then clean up from another thread
        # (joining actors from the supervisor's own thread would deadlock).
        self._escalation = text
        self._ready.set()  # wakes a start() still waiting for the tree
        threading.Thread(target=self.stop, name="runtime-escalation", daemon=True).start()

    def stop(self, timeout: float | None = None, drain: float | None = None) -> None:
        """Stop every actor and thread this runtime started (idempotent).

        Running jobs get ``drain`` seconds (default ``drain_timeout``) to finish;
        queued ones stay queued in the store for the next start, and the attempts of
        any still running after the drain are stopped (``stopped``, which does not count
        against their retries): the next start runs those jobs again. Whoever waits
        for a job (``wait_job``, ``run``, ``waiting``) gets ``RuntimeStopped``.

        Called from a callback while another stop is under way, it returns at once:
        that stop waits for the callback threads, this one must not wait for it.
        """
        with self._blocked_lock:
            begun, self._stop_begun = self._stop_begun, True
        if begun and self.callbacks.calling()[0]:
            return
        try:
            self._stop(self.settings.ask_timeout if timeout is None else timeout,
                       self.settings.drain_timeout if drain is None else drain)
        finally:  # even a stop that failed half-way: no one waits for its jobs any more
            self._release_waiters()

    def _release_waiters(self, unfinished_only: bool = False) -> None:
        """Release the waits registered so far, each once; ``unfinished_only``: those whose
        job has not finished (the scheduler, stopped, still holds their waiter)."""
        waiting = self._scheduler_memory.waiters
        with self._blocked_lock:
            chosen = [token for token, wait in self._blocked.items()
                      if not unfinished_only or wait.job_id is None or wait.waiter in waiting.get(wait.job_id, ())]
            waits = [self._blocked.pop(token) for token in chosen]
        calling, job_here = self.callbacks.calling()
        for wait in waits:
            if (calling and wait.job_id is not None and wait.job_id == job_here
                    and wait.waiter not in waiting.get(wait.job_id, ())):
                # The stop comes from a callback of this job, which has finished: its status may
                # be queued behind the call running now. The release goes behind it (it does
                # nothing once the status is given). A job not finished has no status to wait for.
                self.callbacks.post(_released_quietly(wait.release), job_id=wait.job_id, inline=True)
            else:
                _released_quietly(wait.release)()

    def _stop(self, timeout: float, drain: float) -> None:
        self._drain(drain)
        with self._lifecycle:
            if self._stopped.is_set() and self._supervisor is None:
                return
            supervisor, self._supervisor = self._supervisor, None
            children: list[pykka.ActorRef[Any]] = []
            if supervisor is not None:
                try:
                    children = supervisor.proxy().shutdown().get(timeout=timeout)
                except (pykka.ActorDeadError, pykka.Timeout):
                    children = [r for n in self.directory.names() if n != "supervisor"
                                if (r := self.directory.get(n)) is not None]
            for ref in children:
                _stop_ref(ref, timeout)
            if supervisor is not None:
                _stop_ref(supervisor, timeout)
            for name in self.directory.names():
                self.directory.set(name, None)
            # After an escalation the actors were stopped without waiting: a scheduler may
            # still be committing. Its store is closed once it is done.
            if not self._scheduler_memory.wait_unused(timeout):
                logger.error("the scheduler did not finish within %.1f s; closing its store anyway", timeout)
            self._scheduler_memory.close()  # a scheduler that failed for good left it open
            if self._journal is not None:  # submits waiting for a scheduler get RuntimeStopped
                self._journal.close()
            if self._folder_lock is not None:
                os.close(self._folder_lock)
                self._folder_lock = None
            if self._owns_pools:
                self.pools.close()
            if self._owns_clock:
                self.clock.close()
            # Waits for jobs that did not finish end first (a callback may be one of them);
            # the queued callbacks run next, finished jobs' waiters among them.
            self._release_waiters(unfinished_only=True)
            self.callbacks.close()
            self._proxies.clear()
            self._stopped.set()
        atexit.unregister(self.stop)
        logger.info("runtime stopped")

    def _drain(self, seconds: float) -> None:
        if self._stopped.is_set() or self._escalation is not None or self._supervisor is None:
            return  # stopped, failing, or never started: nothing to drain
        try:
            scheduler = self.proxy("scheduler")
            if scheduler.drain().get(timeout=self.settings.ask_timeout) == 0:
                return
            deadline = time.monotonic() + seconds
            pause = threading.Event()
            while time.monotonic() < deadline:
                if scheduler.running_count().get(timeout=self.settings.ask_timeout) == 0:
                    return
                pause.wait(0.01)
            logger.warning("drain: jobs still running after %.1f s are stopped; they run again at the next start",
                           seconds)
            # Stopped now, not when each worker's stop times out behind its attempt.
            scheduler.interrupt().get(timeout=self.settings.ask_timeout)
        except (pykka.ActorDeadError, pykka.Timeout, RuntimeStopped):
            pass  # nothing left to drain

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the runtime stops; ``False`` on timeout.

        Raises:
            SupervisorEscalated: it stopped because an actor kept failing.
        """
        stopped = self._stopped.wait(timeout)
        if stopped and self._escalation is not None:
            raise SupervisorEscalated(self._escalation)
        return stopped

    @property
    def running(self) -> bool:
        return not self._stopped.is_set()

    @property
    def escalation(self) -> str | None:
        """Why the supervisor stopped the runtime, if it did."""
        return self._escalation

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- the user's handles -----------------------------------------------------------

    def ref(self, name: str, timeout: float | None = None) -> pykka.ActorRef[Any]:
        """The live ref of actor ``name``, waiting while it restarts.

        Raises:
            RuntimeStopped: the runtime is stopped, or the actor did not come back in time.
        """
        self._check_running()
        ref = self.directory.wait_for(name, self.settings.ask_timeout if timeout is None else timeout)
        if ref is None or not ref.is_alive():
            self._check_running()
            raise RuntimeStopped(f"actor {name} is not running")
        return ref

    def proxy(self, name: str) -> Any:
        """A pykka proxy of the current ``name`` actor (made once per instance: proxies cost)."""
        ref = self.ref(name)
        cached = self._proxies.get(name)
        if cached is None or cached[0] != ref.actor_urn:
            cached = (ref.actor_urn, ref.proxy())
            self._proxies[name] = cached
        return cached[1]

    def _ask(self, name: str, call: Callable[[Any], pykka.Future[Any]]) -> Any:
        """``call(proxy of name)``'s answer. An instance that stopped before it handled
        the message (a restart) never ran it, so the new instance is asked once more.

        Raises:
            RuntimeStopped: the runtime stopped, or the actor did not come back.
        """
        for last in (False, True):
            try:
                return call(self.proxy(name)).get(timeout=self.settings.ask_timeout)
            except pykka.ActorDeadError:
                if last:
                    self._check_running()
                    raise RuntimeStopped(f"actor {name} stopped before it answered") from None
        raise AssertionError("unreachable")

    @property
    def cache(self) -> Any:
        """Proxy of the CacheActor: ``rt.cache.get_script(id).get()``."""
        return self.proxy("cache")

    @property
    def stats(self) -> Any:
        """Proxy of the StatsActor: ``rt.stats.snapshot().get()``."""
        return self.proxy("stats")

    @property
    def watcher(self) -> Any:
        """Proxy of the WatcherActor."""
        return self.proxy("watcher")

    @property
    def scheduler(self) -> Any:
        """Proxy of the SchedulerActor: ``rt.scheduler.status(job_id).get()``."""
        return self.proxy("scheduler")

    # --- jobs -------------------------------------------------------------------------

    def script(self, script_id: str) -> Script:
        """The registry entry ``script_id`` (from the cache's published view when warm).

        Raises:
            ScriptNotFound: no such script.
        """
        return self._lookup(script_id, lambda: self._ask("cache", lambda cache: cache.get_script(script_id)))

    def _lookup(self, script_id: str, missed: Callable[[], Script]) -> Script:
        """The script from the published view (a hit counted), else ``missed()``."""
        script = self.cache_view.entries.get(script_id)
        if script is None:
            return missed()
        self._view_hits.hit(script_id)
        return script

    def cache_stats(self) -> dict[str, Any]:
        """The cache's figures (``hits``, ``misses``, ``evictions``, ``hit_rate``,
        ``memory_usage``...), counting every lookup made before this call."""
        self._view_hits.flush()
        return dict(self._ask("cache", lambda cache: cache.stats()))

    def submit(
        self,
        script_id: str,
        arguments: dict[str, Any] | None = None,
        priority: int | str = "normal",
        *,
        max_retries: int | None = None,
        callback: Callable[[str, float, str], Any] | None = None,
        on_done: Callable[[dict[str, Any]], Any] | None = None,
    ) -> str:
        """Validate and accept a job; it is durable when this returns.

        With the default store the job goes to the submit journal (one write) and the
        scheduler inserts it into the store with its next group commit; with a custom
        store the scheduler commits it before this returns
        (``runtime/submit_journal.py``).

        Args:
            script_id: a registered script.
            arguments: the script's arguments (validated against the registry).
            priority: ``"high"``, ``"normal"``, ``"low"`` or 0, 1, 2 (a ``JobPriority``).
            max_retries: overrides the script's and the runtime's retry limit.
            callback: ``callback(job_id, fraction, message)`` on each progress report,
                called off the actor threads.
            on_done: ``on_done(status)`` once the job has finished, off the actor
                threads (as :meth:`when_done`, without a second round trip).

        Returns:
            the job id.

        Raises:
            ScriptNotFound: no such script (nothing is queued).
            InvalidArguments: the arguments do not fit the script (nothing is queued).
            PoolError: an ``sql`` script's database pool does not exist (nothing is queued).
            StoreError: the job could not be written (nothing is queued).
            RuntimeStopped: the runtime stopped.
            TimeoutError: the scheduler stayed 256 submits behind for ``ask_timeout``
                seconds (nothing is queued).
        """
        level = priority_level(priority)
        check_max_retries(max_retries)
        check_callbacks(callback, on_done)
        script, values = self._checked_job(script_id, arguments)
        journal = self._journal
        if journal is None:  # a custom store: the scheduler commits the job before it answers
            return str(self._accept(AcceptJobs(((script, values),), level, max_retries, callback, on_done))[0])
        self._check_running()
        record = new_job(script, values, level, max_retries)
        journal.submit(record, script, (callback, on_done), self.settings.ask_timeout)
        return record.id

    def submit_many(
        self,
        jobs: Iterable[tuple[str, dict[str, Any] | None]],
        priority: int | str = "normal",
        *,
        on_done: Callable[[dict[str, Any]], Any] | None = None,
    ) -> list[str]:
        """Validate and accept several jobs at once: one round trip and one commit.

        All or none: one unknown script or bad argument refuses the whole batch,
        the error naming its position.

        Args:
            jobs: ``(script_id, arguments)`` pairs.
            priority: the priority of every job of the batch.
            on_done: called with each job's final status, as for :meth:`submit`.

        Returns:
            the job ids, in the order of ``jobs``.
        """
        level = priority_level(priority)
        check_callbacks(None, on_done)
        checked = checked_jobs(self._checked_job, list(jobs))  # here: a lookup that misses reads the file on this thread
        return self._accept(AcceptJobs(tuple(checked), level, on_done=on_done)) if checked else []

    def _accept(self, jobs: AcceptJobs) -> list[str]:
        """Have the scheduler accept jobs checked here (one commit); their ids."""
        return list(self._ask("scheduler", lambda scheduler: scheduler.actor_ref.ask(jobs, block=False)))

    def _checked_job(self, script_id: str, arguments: dict[str, Any] | None,
                     lookup: Callable[[str], Script] | None = None) -> tuple[Script, dict[str, Any]]:
        """The script and the validated arguments of a job about to be submitted.

        Args:
            lookup: finds the script (default :meth:`script`).

        Raises:
            ScriptNotFound, InvalidArguments, PoolError (an ``sql`` script's pool is missing).
        """
        if not isinstance(script_id, str):
            raise InvalidArguments(f"a script id is a string, got {type(script_id).__name__}")  # not the value
        script = (lookup or self.script)(script_id)
        values = validate_arguments(script, arguments)
        if script.kind == "sql":
            self.pools.postgres(script.options.get("pool", "default"))  # no such pool: say so now
        return script, values

    def _scheduler_check(self, script_id: str, arguments: dict[str, Any] | None) -> tuple[Script, dict[str, Any]]:
        """The check of the scheduler proxy's submits, made on the scheduler's thread: its
        script comes from the published view, else from the registry file, never from an
        ask (a handler does not ask another actor)."""
        def from_file(script_id: str) -> Script:
            script = self._registry_file.get(script_id)  # parsed once per version of the file
            if script is None:
                raise ScriptNotFound(script_id, str(self.settings.registry_path))
            return script

        return self._checked_job(script_id, arguments, lambda sid: self._lookup(sid, lambda: from_file(sid)))

    def _script_now(self, script_id: str) -> Script | None:
        """For the scheduler as a job starts, on its thread: the script from the published
        view, else from the registry file (``None``: removed). Not a cache hit: no one
        looked it up."""
        script = self.cache_view.entries.get(script_id)
        return script if script is not None else self._registry_file.get(script_id)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status: ``status``, ``attempts``, ``progress``, ``result``, ``error``...

        Raises:
            JobNotFound: no such job.
        """
        _check_job_id(job_id)
        status = self._ask("scheduler", lambda scheduler: scheduler.status(job_id))
        if status is None:
            raise JobNotFound(job_id)
        return dict(status)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (its process group is killed); ``False`` if it
        had finished already.

        Raises:
            JobNotFound: ``job_id`` is not a string.
        """
        _check_job_id(job_id)
        return bool(self._ask("scheduler", lambda scheduler: scheduler.cancel(job_id)))

    def when_done(self, job_id: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``fn(status)`` off the actor threads once the job has finished.

        Raises:
            JobNotFound: no such job.
        """
        _check_job_id(job_id)
        if not self._ask("scheduler", lambda scheduler: scheduler.when_done(job_id, fn)):
            raise JobNotFound(job_id)

    def wait_job(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job has finished; its final status.

        Raises:
            JobNotFound: no such job.
            InvalidArguments: ``timeout`` is not ``None`` or 0 to a year of seconds.
            TimeoutError: not finished within ``timeout`` seconds.
            RuntimeStopped: the runtime stopped first (the job stays in the store).
        """
        _check_job_id(job_id)
        timeout = check_wait_timeout(timeout)
        waiter = _Waiter()
        with self.waiting(waiter.release, job_id, waiter):
            self.when_done(job_id, waiter)
            return waiter.result(job_id, timeout)

    def run(self, script_id: str, arguments: dict[str, Any] | None = None, timeout: float | None = None,
            **options: Any) -> dict[str, Any]:
        """Submit a job and wait for its end; its final status.

        Raises:
            as :meth:`submit`; InvalidArguments and TimeoutError as :meth:`wait_job` (a bad
            ``timeout`` submits nothing); RuntimeStopped: the runtime stopped first (the job
            stays in the store).
        """
        timeout = check_wait_timeout(timeout)  # before the submit: a bad one queues nothing
        waiter = _Waiter()
        job_id = self.submit(script_id, arguments, on_done=waiter, **options)
        try:
            with self.waiting(waiter.release, job_id, waiter):
                return waiter.result(job_id, timeout)
        except RuntimeStopped:
            if waiter.status is not None:  # it finished before the stop
                return waiter.status
            raise

    def forget_waiter(self, job_id: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        """Drop a completion callback registered with :meth:`when_done` (or ``on_done``);
        never blocks (a scheduler restarting just then keeps it until the job ends)."""
        if not isinstance(job_id, str):
            return  # no job has it
        tell_ref(self.directory.get("scheduler"), ForgetWaiter(job_id, fn))

    @contextlib.contextmanager
    def waiting(self, release: Callable[[], None], job_id: str | None = None,
                waiter: Callable[[dict[str, Any]], Any] | None = None) -> Iterator[None]:
        """For code that waits for this runtime's jobs: ``release()`` is called if the runtime
        stops meanwhile, so that nothing waits for a job of a stopped runtime.

        Args:
            release: ends the wait.
            job_id, waiter: the job and the completion callback the wait is for (registered
                with ``when_done``): a wait whose job has finished is released only after the
                callbacks still queued have run, so that its status still reaches it; the
                others (and waits that name no job) are released before, so that a callback
                waiting that way cannot hold the stop up. A wait given up (a timeout, a
                cancel: the block raises) drops ``waiter`` rather than keep it registered
                until the job ends.

        Raises:
            RuntimeStopped: the runtime is stopped already.
        """
        token = object()  # one entry per wait, even for the same release
        with self._blocked_lock:
            self._check_running()
            self._blocked[token] = _Wait(release, job_id, waiter)
        try:
            yield
        except BaseException:
            if job_id is not None and waiter is not None:
                self.forget_waiter(job_id, waiter)
            raise
        finally:
            with self._blocked_lock:
                self._blocked.pop(token, None)  # gone already if stop released it

    def resize_workers(self, count: int, drain: float | None = None) -> None:
        """Grow or shrink the worker pool to ``count`` WorkerActors, without a restart.

        New workers start at once. Workers beyond ``count`` get no more jobs; each is
        stopped once its running attempt has ended (waiting at most ``drain`` seconds,
        default ``drain_timeout``; one still busy then is stopped after its attempt,
        whose report still counts).

        Raises:
            ConfigError: ``count`` is not an integer of at least 1.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"the worker pool needs at least 1 worker, got {count!r}")
        with self._resize_lock:  # one at a time: each starts from the pool the last one left
            self._check_running()
            timeout = self.settings.ask_timeout
            supervisor = self.proxy("supervisor")
            current = self.settings.job_concurrency
            context = self._context_factory()
            for index in range(current, count):
                name = f"worker-{index}"
                self.scheduler.enlist_worker(name).get(timeout=timeout)
                supervisor.add_child(self._worker_spec(name, context)).get(timeout=timeout)
                self._pool_size(index + 1)  # as it goes: a resize that fails half-way leaves it right
            deadline = time.monotonic() + (self.settings.drain_timeout if drain is None else drain)
            pause = threading.Event()
            for index in reversed(range(count, current)):
                name = f"worker-{index}"
                idle = self.scheduler.retire_worker(name).get(timeout=timeout)
                while not idle and time.monotonic() < deadline:
                    pause.wait(0.01)
                    idle = not self.scheduler.worker_busy(name).get(timeout=timeout)
                ref = supervisor.remove_child(name).get(timeout=timeout)
                self._pool_size(index)
                if ref is not None:
                    _stop_ref(ref, timeout)
            logger.info("worker pool resized from %d to %d", current, count)

    def _pool_size(self, count: int) -> None:
        self.settings = dataclasses.replace(self.settings, job_concurrency=count)

    def queue_stats(self) -> dict[str, Any]:
        """``queue_size``, ``running_jobs``, ``completed_jobs``, ``failed_jobs`` and more."""
        return dict(self._ask("scheduler", lambda scheduler: scheduler.queue_stats()))

    def execution_stats(self, script_id: str | None = None) -> dict[str, Any]:
        """Attempts, failures and duration percentiles of a script (or of all)."""
        return dict(self._ask("scheduler", lambda scheduler: scheduler.execution_stats(script_id)))

    def stats_snapshot(self) -> dict[str, Any]:
        """Every figure: each actor reports its pending counts before the snapshot (exact,
        except for a worker busy with a long job, whose count follows later)."""
        timeout = self.settings.ask_timeout
        with contextlib.suppress(pykka.ActorDeadError, RuntimeStopped):
            self._view_hits.flush()
        for name in self.directory.names():
            if name in ("supervisor", "stats"):
                continue
            try:
                # A worker busy with a long job answers only after it: its count may lag.
                self.proxy(name).flush_stats().get(timeout=0.2 if name.startswith("worker-") else timeout)
            except (pykka.ActorDeadError, pykka.Timeout, RuntimeStopped):
                pass  # restarting or busy: its count follows in its next report
        return dict(self.stats.snapshot().get(timeout=timeout))

    def inject_fault(self, name: str, reason: str = "injected fault", exit: bool = False) -> None:
        """Make actor ``name`` raise on its next message (this one), as a crash would.

        Args:
            name: the actor.
            reason: the exception's message.
            exit: raise ``SystemExit`` (a ``BaseException``) instead of ``InjectedFault``.
        """
        self.ref(name).tell(InjectFault(reason, exit))

    def _check_running(self) -> None:
        if self._escalation is not None:
            raise RuntimeStopped(f"the runtime stopped: {self._escalation}")
        if self._stopped.is_set():
            raise RuntimeStopped("the runtime is stopped")


@dataclasses.dataclass(frozen=True, slots=True)
class _Wait:
    """One wait registered with ``Runtime.waiting``."""

    release: Callable[[], None]
    job_id: str | None = None
    waiter: Callable[[dict[str, Any]], Any] | None = None


class _Waiter:
    """A completion callback that a thread can block on.

    It only sets an event, so it is called on the scheduler's thread
    (``runs_inline``), after the job's own progress callbacks if any are still
    queued: other jobs' slow callbacks never delay ``wait_job`` or ``run``.
    """

    runs_inline = True

    def __init__(self) -> None:
        self._done = threading.Event()
        self._status: dict[str, Any] = {}

    def __call__(self, status: dict[str, Any]) -> None:
        self._status = status
        self._done.set()

    def release(self) -> None:
        """The runtime stopped: the job will not finish in this process."""
        self._done.set()

    @property
    def status(self) -> dict[str, Any] | None:
        """The final status, once the job has finished."""
        return self._status or None

    def result(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
        if not self._status:
            raise RuntimeStopped(f"the runtime stopped before job {job_id} finished (it stays in the store "
                                 "and the next start runs it)")
        return self._status


def _absolute_registry(settings: Settings) -> Settings:
    registry = Path(settings.registry_path).absolute()
    jobs = settings.job_storage_path or registry.parent / ".jobs"
    return dataclasses.replace(settings, registry_path=registry, job_storage_path=Path(jobs).absolute())


def _stop_ref(ref: pykka.ActorRef[Any], timeout: float) -> None:
    try:
        ref.stop(block=True, timeout=timeout)
    except pykka.Timeout:
        logger.error("actor %s did not stop within %.1f s", ref, timeout)
    except pykka.ActorDeadError:
        pass


def _released_quietly(release: Callable[[], None]) -> Callable[[], None]:
    """``release`` as a call that logs what it raises: one caller's broken release must not
    keep the others waiting."""
    def call() -> None:
        try:
            release()
        except Exception:
            logger.exception("runtime: a release of a waiter raised")
    return call


def _check_job_id(job_id: Any) -> None:
    """A job id of another type (a status dict passed by mistake) is no job's: say so
    before it reaches the scheduler."""
    if not isinstance(job_id, str):
        raise JobNotFound(job_id)
