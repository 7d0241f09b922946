"""The interpreter: one execution's state machine over its definition, with no I/O.

The engine feeds it what happened (start, a task's end, a timer, a message, a child's end, a
cancel) and it changes the execution record, recording an event for each change and listing
the effects for the engine to carry out once the record is saved (submit or cancel a task,
start or cancel a child execution). Timers and channel watches are not effects: they are read
from the record (``StepRun.timer_at``, waiting runs), so a restarted engine finds them again.

Threads: the root follows the top-level steps; a ``parallel`` step starts one thread per branch
and a ``map`` step one per item (at most ``max_concurrency`` at once). A run is keyed by its
step id plus ``#i`` for each enclosing map item. A step is never run again once completed:
after a crash the engine resumes from the saved record, and an agent task in flight is
recovered by its task id (tasks are submitted with an idempotency key of execution, run key
and attempt, so re-submitting one after a crash returns the same task).

This module holds :class:`Interpreter` itself: what happened (its public methods), moving
threads from step to step, and runs and threads ending (retries, catches, the execution's
end). The handler of each step type is in :mod:`fleetchat.workflows.steps`, parallel branches
and map items in :mod:`fleetchat.workflows.joins`, and the effects (re-exported here) in
:mod:`fleetchat.workflows.effects`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fleetchat.workflows.effects import CancelChild, CancelTask, Effect, StartChild, SubmitTask
from fleetchat.workflows.expressions import ExpressionError, Expressions
from fleetchat.workflows.joins import error
from fleetchat.workflows.model import (
    AgentTaskStep,
    Definition,
    MapStep,
    ParallelStep,
    Step,
    WaitStep,
    find_step,
)
from fleetchat.workflows.records import ExecutionEvent, ExecutionRecord, StepRun, Thread
from fleetchat.workflows.steps import StepHandlers

__all__ = [
    "CancelChild",
    "CancelTask",
    "Effect",
    "Interpreter",
    "StartChild",
    "SubmitTask",
    "task_error",
]

_NOT_RETRIED = frozenset({"fleetchat.cancelled", "fleetchat.runtime", "fleetchat.loop_limit"})


def task_error(state: str, outcome: str | None, reason: str | None) -> tuple[str, str]:
    """The workflow error type (and message) for a task that ended without a result."""
    if state == "timed_out":
        return "fleetchat.agent_unavailable", reason or "no agent started the task in time"
    if state == "cancelled":
        return "fleetchat.cancelled", reason or "the task was cancelled"
    kinds = {
        "start_to_close": "fleetchat.timeout",
        "heartbeat": "fleetchat.heartbeat_timeout",
        "agent_lost": "fleetchat.agent_unavailable",
        "rejected": "fleetchat.agent_rejected",
    }
    return kinds.get(outcome or "", "fleetchat.agent_error"), reason or outcome or "failed"


class Interpreter(StepHandlers):
    """Changes ``record`` in place; read ``events`` and ``effects`` after each call."""

    def __init__(
        self, definition: Definition, expressions: Expressions, record: ExecutionRecord, now: float
    ) -> None:
        self.d = definition
        self.x = expressions
        self.r = record
        self.now = now
        self.events: list[ExecutionEvent] = []
        self.effects: list[Effect] = []
        self.channel_seq: Callable[[str], int] = lambda channel: 0
        """The channel's newest seq now (set by the engine): a wait counts later messages."""

    # -- what happened ----------------------------------------------------------------------

    def start(self) -> None:
        if self.r.threads:
            return  # started already (a resume that read an old copy)
        self._event("execution.started", data={"input": self.r.input})
        self.r.threads["root"] = Thread(id="root", scope=[], step=self.d.start)
        self._advance()

    def task_finished(
        self,
        key: str,
        state: str,
        result: Any,
        outcome: str | None,
        reason: str | None,
        agent: str | None = None,
    ) -> None:
        run = self.r.runs.get(key)
        if run is None or run.status not in ("running", "waiting") or self.r.finished:
            return
        run.agent = agent or run.agent  # who did it (a capability-routed step too)
        if state == "succeeded":
            self._complete(run, result)
        else:
            kind, message = task_error(state, outcome, reason)
            self._failed(run, error(kind, message, run.step, run.attempt))
        self._advance()

    def timer(self, key: str) -> None:
        run = self.r.runs.get(key)
        if run is None or run.status not in ("running", "waiting") or run.timer_at is None:
            return
        if run.timer_at > self.now + 1e-6:
            return  # moved since the engine armed it
        kind, run.timer, run.timer_at = run.timer, None, None
        step = self._step(run.step)
        if kind == "retry":
            run.status = "running"
            self.effects.append(SubmitTask(run.key, run.attempt))
            self._event("step.scheduled", run)
        elif kind == "wait" and isinstance(step, WaitStep):
            self._complete(run, {"waited_until": self.now})
        else:  # a timeout: the wait's, or the step's schedule_to_close
            self._stop_run(run, "timed out")
            self._failed(
                run,
                error("fleetchat.timeout", "the step timed out", run.step, run.attempt),
                retry=False,
            )
        self._arm_step_deadline(run)
        self._advance()

    def message(self, key: str, message: dict[str, Any]) -> bool:
        """A message on a waiting run's channel; True when it ended the wait."""
        run = self.r.runs.get(key)
        step = self._step(run.step) if run is not None else None
        if (
            run is None
            or run.status != "waiting"
            or not isinstance(step, WaitStep)
            or step.message is None
        ):
            return False
        if message.get("seq", 0) <= run.after_seq:
            return False
        if step.message.when:
            try:
                ok = bool(
                    self.x.evaluate(step.message.when, self._activation(run, message=message))
                )
            except ExpressionError as exc:
                self._failed(run, error("fleetchat.expression", str(exc), run.step), retry=False)
                self._advance()
                return True
            if not ok:
                return False
        self._complete(run, message)
        self._advance()
        return True

    def child_finished(self, key: str, child: ExecutionRecord) -> None:
        run = self.r.runs.get(key)
        if run is None or run.status != "running":
            return
        if child.status == "completed":
            self._complete(run, child.output)
        else:
            err = dict(child.error or error("fleetchat.failed", child.status))
            self._failed(run, {**err, "step": run.step, "attempt": run.attempt})
        self._advance()

    def step_error(self, key: str, err: dict[str, Any]) -> None:
        """Carrying out a run's effect failed (no agent could ever take its task, a child
        definition is missing): the run fails with ``err`` (retried or caught as usual)."""
        run = self.r.runs.get(key)
        if run is not None and run.status in ("running", "waiting"):
            self._failed(run, {**err, "step": run.step, "attempt": run.attempt})
            self._advance()

    def cancel(self, reason: str) -> None:
        if self.r.finished:
            return
        for thread in self.r.threads.values():
            if thread.status == "active":
                self._stop_thread(thread, "cancelled")
        self._finish("cancelled", error=error("fleetchat.cancelled", reason))

    def redrive(self) -> None:
        """Run a failed execution again from its failed step(s): completed steps keep their
        outputs; the failed runs start over at attempt 1."""
        if self.r.status != "failed":
            return
        self.r.status, self.r.error, self.r.ended_at = "running", None, None
        self._event("execution.redriven")
        for thread in self.r.threads.values():
            if thread.status == "failed":
                thread.status, thread.error = "active", None  # back at its failed step
                self.r.visits[(thread.step or "") + thread.suffix] -= 1
        self._advance()

    def execution_timeout(self) -> None:
        if self.r.finished:
            return
        for thread in self.r.threads.values():
            if thread.status == "active":
                self._stop_thread(thread, "execution timed out")
        self._finish("failed", error=error("fleetchat.timeout", "the execution timed out"))

    # -- moving threads ---------------------------------------------------------------------

    def _advance(self) -> None:
        """Enter the steps of every thread that stands before one, until all wait."""
        for _ in range(10_000):
            if self.r.finished:
                return
            live = self._live()
            ready = [
                t
                for t in self.r.threads.values()
                if t.status == "active" and t.step is not None and (t.step + t.suffix) not in live
            ]
            if not ready:
                return
            for thread in ready:
                if thread.status == "active" and not self.r.finished:
                    self._enter(thread)
        self._finish("error", error=error("fleetchat.runtime", "the engine did not settle"))

    def _live(self) -> set[str]:
        return {k for k, r in self.r.runs.items() if r.status in ("running", "waiting")}

    def _goto(self, thread: Thread, target: str | None) -> None:
        if target is None:
            steps = self._scope(thread)
            ids = [s.id for s in steps]
            at = ids.index(thread.step) if thread.step in ids else len(ids) - 1
            target = ids[at + 1] if at + 1 < len(ids) else "end"
        if target == "end":
            self._thread_done(thread)
        elif target == "fail":
            self._thread_failed(thread, error("fleetchat.failed", "reached fail", thread.step))
        else:
            thread.step = target

    def _scope(self, thread: Thread) -> list[Step]:
        if not thread.scope:
            return list(self.d.steps)
        container = self._step(thread.scope[0])
        if isinstance(container, ParallelStep):
            return list(container.branches[thread.scope[1]])
        assert isinstance(container, MapStep)
        return list(container.steps)

    # -- runs ending ------------------------------------------------------------------------

    def _complete(self, run: StepRun, output: Any, *, move: bool = True) -> None:
        run.status, run.output, run.ended_at = "completed", output, self.now
        run.timer = run.timer_at = None
        self._event("step.completed", run, data={"output": output})
        thread = self.r.threads.get(run.thread)
        if thread is not None:
            thread.last = run.key
        if move and thread is not None and thread.status == "active":
            self._goto(thread, self._step(run.step).next)

    def _failed(self, run: StepRun, err: dict[str, Any], *, retry: bool = True) -> None:
        step = self._step(run.step)
        policy = getattr(step, "retry", None)
        retryable = (
            retry
            and policy is not None
            and err["type"] not in _NOT_RETRIED
            and err["type"] not in policy.non_retryable
            and run.attempt - run.first + 1 < policy.max_attempts
        )
        run.error = err
        if retryable:
            assert policy is not None
            delay = policy.delay(run.attempt)
            run.attempt += 1
            run.status, run.timer, run.timer_at = "waiting", "retry", self.now + delay
            self._event("step.retrying", run, data={"error": err, "delay": delay})
            return
        run.status, run.ended_at, run.timer, run.timer_at = "failed", self.now, None, None
        self._event(
            "step.timed_out" if err["type"] == "fleetchat.timeout" else "step.failed", run, data=err
        )
        thread = self.r.threads.get(run.thread)
        if thread is None or thread.status != "active":
            return
        for catch in getattr(step, "catch", None) or []:
            if err["type"] == "fleetchat.runtime":
                break
            if err["type"] in catch.errors or "fleetchat.all" in catch.errors:
                if catch.as_:
                    self.r.vars[catch.as_] = err
                thread.caught = err
                self._event("step.caught", run, data={"next": catch.next})
                self._goto(thread, catch.next)
                return
        self._thread_failed(thread, err)

    def _stop_run(self, run: StepRun, reason: str) -> None:
        if isinstance(self._step(run.step), AgentTaskStep) and run.status == "running":
            self.effects.append(CancelTask(run.key, run.attempt, reason))
        if run.child is not None and run.status in ("running", "waiting"):
            self.effects.append(CancelChild(run.child))
        for tid in run.children:
            child = self.r.threads.get(tid)
            if child is not None and child.status == "active":
                self._stop_thread(child, reason)

    def _stop_thread(self, thread: Thread, reason: str) -> None:
        thread.status = "cancelled"
        key = (thread.step or "") + thread.suffix
        run = self.r.runs.get(key)
        if run is not None and run.status in ("running", "waiting"):
            self._stop_run(run, reason)
            run.status, run.ended_at, run.timer, run.timer_at = "cancelled", self.now, None, None
            self._event("step.cancelled", run, data={"reason": reason})

    def _thread_done(self, thread: Thread) -> None:
        thread.status, thread.step = "completed", None
        if thread.parent is None:
            self._finish("completed", output=self._thread_output(thread))
            return
        self._child_thread_ended(thread)

    def _thread_failed(self, thread: Thread, err: dict[str, Any]) -> None:
        thread.status, thread.error = "failed", err
        if thread.parent is None:
            self._finish("failed", error=err)
            return
        self._child_thread_ended(thread)

    def _thread_output(self, thread: Thread) -> Any:
        """The output of the last step the thread completed."""
        run = self.r.runs.get(thread.last) if thread.last else None
        return run.output if run is not None else None

    def _finish(
        self, status: str, *, output: Any = None, error: dict[str, Any] | None = None
    ) -> None:
        if self.r.finished:
            return
        self.r.status = status  # type: ignore[assignment]
        self.r.output, self.r.error, self.r.ended_at = output, error, self.now
        self._event(f"execution.{status}", data={"output": output} if error is None else error)

    # -- helpers ----------------------------------------------------------------------------

    def _step(self, step_id: str) -> Step:
        return find_step(self.d, step_id)

    def _activation(self, run: StepRun | None = None, **more: Any) -> dict[str, Any]:
        thread = self.r.threads.get(run.thread) if run is not None else None
        suffix = thread.suffix if thread is not None else ""
        steps: dict[str, Any] = {}
        for r in self.r.runs.values():
            if r.key == r.step or (suffix and r.key == r.step + suffix):
                steps[r.step] = {"output": r.output, "error": r.error, "attempts": r.attempt}
        act: dict[str, Any] = {
            "input": self.r.input,
            "steps": steps,
            "vars": self.r.vars,
            "execution": {"id": self.r.id, "started_at": self.r.created_at},
        }
        if thread is not None and thread.index is not None:
            act["item"], act["index"] = thread.item, thread.index
        if run is not None and run.error is not None:
            act["error"] = run.error
        elif thread is not None and thread.caught is not None:
            act["error"] = thread.caught
        act.update(more)
        return act

    def _event(self, kind: str, run: StepRun | None = None, *, data: Any = None) -> None:
        self.r.events += 1
        self.events.append(
            ExecutionEvent(
                execution=self.r.id,
                seq=self.r.events,
                type=kind,
                at=self.now,
                step=run.step if run else None,
                key=run.key if run else None,
                attempt=run.attempt if run else None,
                data=data,
            )
        )
