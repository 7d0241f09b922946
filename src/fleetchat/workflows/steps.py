"""Entering a step: the handler of each step type, run when a thread stands before it.

``StepHandlers`` is a mixin of :class:`fleetchat.workflows.interpreter.Interpreter`, built on
:class:`fleetchat.workflows.joins.Joins` (a parallel or map step starts threads): an agent task
or sub-workflow step lists an effect and arms its deadline; a set, condition, fail or succeed
step ends at once; a wait step arms its timer or watches its channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fleetchat.workflows.effects import Effect, StartChild, SubmitTask
from fleetchat.workflows.expressions import ExpressionError, Expressions
from fleetchat.workflows.joins import Joins, error
from fleetchat.workflows.model import (
    AgentTaskStep,
    ConditionStep,
    Definition,
    FailStep,
    MapStep,
    ParallelStep,
    SetStep,
    Step,
    SubWorkflowStep,
    SucceedStep,
    Timeouts,
    WaitStep,
)
from fleetchat.workflows.records import StepRun, Thread

__all__ = ["StepHandlers"]


class StepHandlers(Joins):
    """Runs a step when its thread enters it."""

    d: Definition
    x: Expressions
    now: float
    effects: list[Effect]
    channel_seq: Callable[[str], int]

    if TYPE_CHECKING:

        def _activation(self, run: StepRun | None = None, **more: Any) -> dict[str, Any]: ...

        def _event(self, kind: str, run: StepRun | None = None, *, data: Any = None) -> None: ...

        def _goto(self, thread: Thread, target: str | None) -> None: ...

        def _thread_failed(self, thread: Thread, err: dict[str, Any]) -> None: ...

        def _finish(
            self, status: str, *, output: Any = None, error: dict[str, Any] | None = None
        ) -> None: ...

    def _enter(self, thread: Thread) -> None:
        assert thread.step is not None
        step = self._step(thread.step)
        key = step.id + thread.suffix
        visits = self.r.visits.get(key, 0) + 1
        self.r.visits[key] = visits
        before = self.r.runs.get(key)
        attempt = before.attempt + 1 if before is not None else 1
        run = StepRun(
            key=key,
            step=step.id,
            thread=thread.id,
            started_at=self.now,
            attempt=attempt,
            first=attempt,
        )
        self.r.runs[key] = run
        if step.max_visits is not None and visits > step.max_visits:
            message = f"step {step.id!r} was entered more than {step.max_visits} times"
            self._failed(run, error("fleetchat.loop_limit", message, step.id), retry=False)
            return
        try:
            self._run(step, run, thread)
        except ExpressionError as exc:
            self._failed(run, error("fleetchat.expression", str(exc), step.id), retry=False)

    def _run(self, step: Step, run: StepRun, thread: Thread) -> None:
        act = self._activation(run)
        if isinstance(step, AgentTaskStep):
            run.input = self.x.render(step.input, act)
            if step.agent.id is not None:
                run.agent = str(self.x.render(step.agent.id, act))
            self.effects.append(SubmitTask(run.key, run.attempt))
            self._event("step.scheduled", run, data={"input": run.input})
            self._arm_step_deadline(run)
        elif isinstance(step, SetStep):
            values = {k: self.x.render(v, act) for k, v in step.values.items()}
            self.r.vars.update(values)
            self._complete(run, values)
        elif isinstance(step, ConditionStep):
            target = next(
                (c.next for c in step.cases if bool(self.x.evaluate(c.when, act))), step.default
            )
            run.status, run.output, run.ended_at = "completed", {"next": target}, self.now
            self._event("step.completed", run, data={"next": target})
            self._goto(thread, target)
        elif isinstance(step, WaitStep):
            self._wait(step, run, act)
        elif isinstance(step, FailStep):
            run.status, run.ended_at = "failed", self.now
            run.error = error(step.error, str(self.x.render(step.message, act)), step.id)
            self._event("step.failed", run, data=run.error)
            self._thread_failed(thread, run.error)
        elif isinstance(step, SucceedStep):
            output = self.x.render(step.output, act)
            self._complete(run, output, move=False)
            for other in self.r.threads.values():
                if other.status == "active" and other is not thread:
                    self._stop_thread(other, "the execution succeeded")
            self._finish("completed", output=output)
        elif isinstance(step, ParallelStep):
            for name in step.branches:
                self._spawn(run, thread, [step.id, name], step.branches[name][0].id, branch=name)
            self._event("step.scheduled", run, data={"branches": list(step.branches)})
        elif isinstance(step, MapStep):
            items = self.x.evaluate(step.items, act)
            if not isinstance(items, list):
                raise ExpressionError(step.items, f"gave {type(items).__name__}, not a list")
            run.items = items
            self._event("step.scheduled", run, data={"items": len(items)})
            if not items:
                self._complete(run, [])
            else:
                self._fill_map(step, run, thread)
        elif isinstance(step, SubWorkflowStep):
            run.input = self.x.render(step.input, act)
            child_id = f"{self.r.id}.{run.key}.1"
            run.child = child_id
            self.effects.append(StartChild(run.key, step.workflow, run.input, child_id))
            self._event("step.scheduled", run, data={"child": child_id})
            self._arm_step_deadline(run)

    def _wait(self, step: WaitStep, run: StepRun, act: dict[str, Any]) -> None:
        run.status = "waiting"
        if step.duration is not None:
            run.timer, run.timer_at = "wait", self.now + step.duration
        elif step.until is not None:
            run.timer, run.timer_at = "wait", self.x.until(step.until, act).timestamp()
        elif step.message is not None:
            run.channel = str(self.x.render(step.message.channel, act))
            run.after_seq = self.channel_seq(run.channel)
            timeout = step.timeout.schedule_to_close if step.timeout else None
            if timeout is not None:
                run.timer, run.timer_at = "timeout", self.now + timeout
        self._event("step.waiting", run)

    def _arm_step_deadline(self, run: StepRun) -> None:
        """schedule_to_close of the whole step, retries included."""
        step = self._step(run.step)
        timeout: Timeouts | None = getattr(step, "timeout", None)
        limit = timeout.schedule_to_close if timeout is not None else None
        if limit is not None and run.timer is None and run.status == "running":
            run.timer, run.timer_at = "timeout", run.started_at + limit
