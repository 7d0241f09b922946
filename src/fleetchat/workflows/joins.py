"""Parallel branches and map items: starting their threads and joining them.

``Joins`` is a mixin of :class:`fleetchat.workflows.interpreter.Interpreter`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetchat.workflows.model import MapStep, ParallelStep, Step
from fleetchat.workflows.records import ExecutionRecord, StepRun, Thread

__all__ = ["Joins", "error"]


def error(
    kind: str, message: str, step: str | None = None, attempt: int | None = None
) -> dict[str, Any]:
    return {"type": kind, "message": message, "step": step, "attempt": attempt}


class Joins:
    """Threads of parallel and map steps, and what their ends make of the step."""

    r: ExecutionRecord

    if TYPE_CHECKING:

        def _step(self, step_id: str) -> Step: ...

        def _thread_output(self, thread: Thread) -> Any: ...

        def _stop_thread(self, thread: Thread, reason: str) -> None: ...

        def _complete(self, run: StepRun, output: Any, *, move: bool = True) -> None: ...

        def _failed(self, run: StepRun, err: dict[str, Any], *, retry: bool = True) -> None: ...

    def _spawn(
        self, run: StepRun, thread: Thread, scope: list[str], first: str, **more: Any
    ) -> Thread:
        tid = f"{run.key}/{more.get('branch') if 'branch' in more else more.get('index')}"
        child = Thread(
            id=tid,
            scope=scope,
            step=first,
            suffix=thread.suffix + (f"#{more['index']}" if "index" in more else ""),
            parent=run.key,
            **more,
        )
        self.r.threads[tid] = child
        run.children = [*run.children, tid]
        return child

    def _fill_map(self, step: MapStep, run: StepRun, thread: Thread) -> None:
        items = run.items or []
        running = sum(1 for t in run.children if self.r.threads[t].status == "active")
        limit = step.max_concurrency or len(items)
        while run.next_item < len(items) and running < limit:
            i = run.next_item
            self._spawn(run, thread, [step.id], step.steps[0].id, index=i, item=items[i])
            run.next_item += 1
            running += 1

    def _child_thread_ended(self, thread: Thread) -> None:
        assert thread.parent is not None
        run = self.r.runs[thread.parent]
        if run.status not in ("running", "waiting"):
            return
        step = self._step(run.step)
        run.finished = {**run.finished, thread.id: thread.status}
        children = [self.r.threads[t] for t in run.children]
        done = [t for t in children if t.status == "completed"]
        failed = [t for t in children if t.status == "failed"]
        if isinstance(step, ParallelStep):
            total = len(step.branches)
            remaining = total - len(done) - len(failed)
            if step.join == "all":
                ok = remaining == 0 and len(failed) <= _tolerated(step.tolerated_failures, total)
                lost = len(failed) > _tolerated(step.tolerated_failures, total)
            elif step.join == "any":
                ok, lost = bool(done), not done and remaining == 0
            else:
                ok, lost = len(done) >= int(step.join), len(done) + remaining < int(step.join)
            if ok:
                output = {t.branch: self._thread_output(t) for t in done}
                self._end_parent(run, children, output)
            elif lost and (step.fail_fast or remaining == 0):
                self._end_parent(run, children, None, failed=failed)
        else:
            assert isinstance(step, MapStep)
            items = run.items or []
            tolerated = _tolerated(step.tolerated_failures, len(items))
            if len(failed) > tolerated:
                self._end_parent(run, children, None, failed=failed)
                return
            parent_thread = self.r.threads[run.thread]
            self._fill_map(step, run, parent_thread)
            children = [self.r.threads[t] for t in run.children]
            if len(children) == len(items) and all(t.status != "active" for t in children):
                by_index = sorted(children, key=lambda t: t.index or 0)
                outputs = [
                    self._thread_output(t) if t.status == "completed" else None for t in by_index
                ]
                self._end_parent(run, children, outputs)

    def _end_parent(
        self,
        run: StepRun,
        children: list[Thread],
        output: Any,
        *,
        failed: list[Thread] | None = None,
    ) -> None:
        for t in children:
            if t.status == "active":
                self._stop_thread(t, "no longer needed")
        if failed:
            first = failed[0].error or {}
            message = f"{len(failed)} branch(es) failed; first: {first.get('message', '')}"
            err = error("fleetchat.branch_failed", message, run.step)
            err["errors"] = [t.error for t in failed]
            self._failed(run, err, retry=False)
        else:
            self._complete(run, output)


def _tolerated(value: int | str, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return int(total * float(value[:-1]) / 100)
    return int(value)
