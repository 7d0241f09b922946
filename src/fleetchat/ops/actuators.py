"""Actuators: how a pool is resized (docs/autoscaling.md).

- :class:`ProcessActuator` (``process``): starts and stops local worker processes;
- :class:`CommandActuator` (``command``): runs a command with the desired count (``kubectl
  scale``, ``nomad job scale``, a systemd template loop);
- :class:`WebhookActuator` (``webhook``): POSTs the desired count to a URL.

A resize that fails raises :class:`ScalingError`; the autoscaler records it, alerts and tries
again at its next evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from fleetchat.errors import FleetchatError
from fleetchat.ops.settings import PoolSettings
from fleetchat.types import Clock

__all__ = [
    "Actuator",
    "CommandActuator",
    "ProcessActuator",
    "ScalingError",
    "WebhookActuator",
    "make_actuator",
]

log = logging.getLogger(__name__)

_OUTPUT_KEPT = 2000  # characters of a failed command's stderr (or a receiver's answer) kept


class ScalingError(FleetchatError):
    """A pool could not be resized (the command failed, the webhook answered non-2xx, ...)."""

    code = "scaling_failed"


class Actuator(Protocol):
    """Resizes one pool."""

    async def resize(self, desired: int, previous: int, reason: str) -> None:
        """Make the pool ``desired`` instances.

        Raises:
            ScalingError: it could not.
        """

    def pids(self) -> list[int]:
        """The pool's local worker processes (empty unless ``process``)."""

    def size(self) -> int | None:
        """The pool's size as this actuator knows it (None: unknown, e.g. a remote one)."""

    def exited(self) -> list[str]:
        """Workers that exited on their own since the last call (and are gone from the pool),
        described for the record."""

    async def close(self) -> None:
        """Let go of the pool (a ``process`` pool's workers are stopped)."""


def make_actuator(
    name: str, pool: PoolSettings, clock: Clock, on_exit: Callable[[], None]
) -> Actuator:
    """The actuator of pool ``name``. ``on_exit`` is called when a worker exits by itself."""
    if pool.actuator == "process":
        return ProcessActuator(name, pool, on_exit)
    if pool.actuator == "command":
        return CommandActuator(name, pool)
    return WebhookActuator(name, pool, clock)


def _tail(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text.strip()[-_OUTPUT_KEPT:]


# -- process ------------------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    started: int
    watch: asyncio.Task[None] | None = None
    stopping: bool = False


class ProcessActuator:
    """Local worker processes running the pool's ``command``.

    Each worker gets ``FLEETCHAT_POOL`` (the pool's name) and ``FLEETCHAT_INSTANCE`` (its
    index: the lowest free one, so a replaced worker keeps its index) in its environment, with
    the pool's ``env``. A scale-in stops the newest workers: SIGTERM (the SDK drains and
    closes), SIGKILL after ``stop_timeout``.
    """

    def __init__(self, name: str, pool: PoolSettings, on_exit: Callable[[], None]) -> None:
        self.name = name
        self.pool = pool
        self._on_exit = on_exit
        self._workers: list[_Worker] = []
        self._exited: list[str] = []
        self._starts = itertools.count()  # start order: a scale-in stops the newest

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def size(self) -> int:
        return len(self._workers)

    def exited(self) -> list[str]:
        out, self._exited = self._exited, []
        return out

    async def resize(self, desired: int, previous: int, reason: str) -> None:
        while len(self._workers) < desired:
            await self._start()
        surplus = sorted(self._workers, key=lambda w: (w.started, w.index))[desired:]
        if surplus:
            await asyncio.gather(*(self._stop(w) for w in surplus))

    async def _start(self) -> None:
        used = {w.index for w in self._workers}
        index = next(i for i in range(len(used) + 1) if i not in used)
        env = {
            **os.environ,
            **self.pool.env,
            "FLEETCHAT_POOL": self.name,
            "FLEETCHAT_INSTANCE": str(index),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.pool.command, env=env, stdin=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            raise ScalingError(
                f"pool {self.name}: cannot start {self.pool.command[0]!r}: {exc}", pool=self.name
            ) from exc
        worker = _Worker(index, proc, next(self._starts))
        worker.watch = asyncio.create_task(self._watch(worker), name=f"scaling-{self.name}")
        self._workers.append(worker)
        log.info("worker started", extra={"pool": self.name, "instance": index, "pid": proc.pid})

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.proc.wait()
        if worker.stopping or worker not in self._workers:
            return
        self._workers.remove(worker)
        self._exited.append(f"instance {worker.index} (pid {worker.proc.pid}) exited {code}")
        log.warning(
            "worker exited", extra={"pool": self.name, "instance": worker.index, "code": code}
        )
        self._on_exit()

    async def _stop(self, worker: _Worker) -> None:
        worker.stopping = True
        proc = worker.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.pool.stop_timeout):
                    await proc.wait()
            except TimeoutError:
                log.warning("worker killed", extra={"pool": self.name, "pid": proc.pid})
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if worker.watch is not None:
            await worker.watch
        with contextlib.suppress(ValueError):
            self._workers.remove(worker)

    async def close(self) -> None:
        await asyncio.gather(*(self._stop(w) for w in list(self._workers)))


# -- command ------------------------------------------------------------------------------------


class CommandActuator:
    """Runs the pool's ``command`` with ``{count}`` in its arguments replaced by the desired
    count, and ``FLEETCHAT_POOL``, ``FLEETCHAT_DESIRED``, ``FLEETCHAT_PREVIOUS`` and
    ``FLEETCHAT_REASON`` in its environment. A non-zero exit or a timeout is a failure."""

    def __init__(self, name: str, pool: PoolSettings) -> None:
        self.name = name
        self.pool = pool
        self._size: int | None = None

    def pids(self) -> list[int]:
        return []

    def size(self) -> int | None:
        return self._size

    def exited(self) -> list[str]:
        return []

    async def resize(self, desired: int, previous: int, reason: str) -> None:
        args = [arg.replace("{count}", str(desired)) for arg in self.pool.command]
        env = {
            **os.environ,
            **self.pool.env,
            "FLEETCHAT_POOL": self.name,
            "FLEETCHAT_DESIRED": str(desired),
            "FLEETCHAT_PREVIOUS": str(previous),
            "FLEETCHAT_REASON": reason,
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ScalingError(
                f"pool {self.name}: cannot run {args[0]!r}: {exc}", pool=self.name
            ) from exc
        try:
            async with asyncio.timeout(self.pool.timeout):
                _, stderr = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise ScalingError(
                f"pool {self.name}: the command took more than {self.pool.timeout:g}s",
                pool=self.name,
            ) from None
        if proc.returncode != 0:
            raise ScalingError(
                f"pool {self.name}: the command exited {proc.returncode}: {_tail(stderr)}",
                pool=self.name,
            )
        self._size = desired

    async def close(self) -> None:
        """Nothing to let go of: the instances are not this hub's."""


# -- webhook ------------------------------------------------------------------------------------


class WebhookActuator:
    """POSTs ``{pool, desired, previous, reason, at}`` (JSON) to the pool's ``url``; any
    answer but 2xx, or none within ``timeout``, is a failure."""

    def __init__(self, name: str, pool: PoolSettings, clock: Clock) -> None:
        self.name = name
        self.pool = pool
        self._clock = clock
        self._size: int | None = None
        self._session: aiohttp.ClientSession | None = None

    def pids(self) -> list[int]:
        return []

    def size(self) -> int | None:
        return self._size

    def exited(self) -> list[str]:
        return []

    async def resize(self, desired: int, previous: int, reason: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        body = {
            "pool": self.name,
            "desired": desired,
            "previous": previous,
            "reason": reason,
            "at": self._clock.time(),
        }
        try:
            async with self._session.post(
                self.pool.url, json=body, timeout=aiohttp.ClientTimeout(total=self.pool.timeout)
            ) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ScalingError(
                f"pool {self.name}: cannot reach {self.pool.url}: {exc or type(exc).__name__}",
                pool=self.name,
            ) from exc
        if not 200 <= status < 300:
            raise ScalingError(
                f"pool {self.name}: {self.pool.url} answered {status}: {_tail(text)}",
                pool=self.name,
            )
        self._size = desired

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
