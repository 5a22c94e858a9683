"""What one workflow run may spend in calls, with the runs of the workflows it calls counted in.

A run's own work is bounded by its definition (steps, `max_iterations`, retries), but nesting multiplies:
a for_each whose tool is a workflow with its own for_each makes items times items calls, and four levels of
10,000-item lists would go on until the run's timeout. So every run holds a `CallBudget`, and a run started
by a step of another (directly, or through call_tool) charges each call to its own budget and to every
enclosing run's: the outermost run's limit bounds the whole tree.

The executor finds the enclosing run (through one context variable that carries the run's budget and its
render slots: executor.py) and makes its budget the new one's `parent`. When a run ends its budget is
closed (`open` is False), so a task that outlives the run (a backend connection started during a step) does
not charge it.

What runs hold of their steps' results and outputs is bounded per caller and for the gateway (`HeldOutputBytes`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from vmcp_opt.config.limits import HeldAnswerBytesConfig
from vmcp_opt.config.workflows import WorkflowConfig

# Calls one run makes at most (its nested runs' included) when the workflow does not say; one whose own
# steps can make more (`max_iterations`, retries) gets that many, so that no workflow without nesting is cut.
MAX_RUN_CALLS = 1000
SETTING = "workflows[].max_calls"


@dataclass
class CallBudget:
    workflow: str
    limit: int
    parent: CallBudget | None = None
    used: int = 0
    open: bool = True  # False once its run has ended: a late charge through it is ignored

    def chain(self) -> Iterator[CallBudget]:
        budget: CallBudget | None = self
        while budget is not None:
            if budget.open:
                yield budget
            budget = budget.parent

    def left(self) -> tuple[int, CallBudget]:
        """The calls this run may still make, and the run whose budget says so (itself or an enclosing one)."""
        return min(((b.limit - b.used, b) for b in self.chain()), key=lambda pair: pair[0])

    def take(self) -> str | None:
        """One call, charged to this run and every enclosing one; or why not (nothing is charged then)."""
        left, spent = self.left()
        if left <= 0:
            return spent_reason(spent)
        for budget in self.chain():
            budget.used += 1
        return None


def spent_reason(budget: CallBudget) -> str:
    return (
        f"workflow '{budget.workflow}' has made the {budget.limit:,} calls one run of it may make, "
        f"the calls of workflows it runs included ({SETTING})"
    )


def fan_out_reason(items: int, budget: CallBudget) -> str | None:
    """Why a for_each over `items` cannot run at all (more items than calls left), or None."""
    left, by = budget.left()
    if items <= left:
        return None
    return (
        f"over: {items:,} items, but workflow '{by.workflow}' may make only {max(left, 0):,} more calls "
        f"in this run, the calls of workflows it runs included ({SETTING}, {by.limit:,})"
    )


def run_call_limit(workflow: WorkflowConfig) -> int:
    """`workflows[].max_calls`; unset, MAX_RUN_CALLS or what the workflow's own steps can make, if more."""
    if workflow.max_calls is not None:
        return workflow.max_calls
    return max(MAX_RUN_CALLS, own_calls(workflow))


def own_calls(workflow: WorkflowConfig) -> int:
    """The most calls the workflow's own steps can make: every for_each at `max_iterations`, every retry."""
    total = 0
    for step in workflow.steps:
        if step.type == "elicitation":
            continue
        attempts = 1 + (step.on_error.retries if step.on_error.action == "retry" else 0)
        total += attempts * (step.max_iterations if step.type == "for_each" else 1)
    return total


# The bounds the held step outputs are charged to: the same as on answers clients have not read.
HELD_SETTING = "limits.held_answer_bytes"
MIB = 1024 * 1024


class HeldOutputBytes:
    """The step results and outputs running workflow runs hold, per caller and in total (the pattern of
    server/held_answers.py's `HeldAnswers`, with `limits.held_answer_bytes`'s bounds). A run's own cap
    (`limits.max_result_bytes`) bounds one run only: 95 runs at once of a for_each of 10 one-MB results took the
    gateway from 131 to 1086 MB. Each run charges a step's result as it arrives and its output once read (`charge`:
    steps in parallel that kept their results as errors, 4 runs of 16 nine-MB ones, held 570 MB uncharged), and
    releases them all when it ends, however it ends."""

    def __init__(self, per_caller: int, total: int) -> None:
        self.per_caller = per_caller
        self.total = total
        self._held: dict[str, int] = {}
        self._count = 0  # the sum of `_held`

    @classmethod
    def of(cls, config: HeldAnswerBytesConfig) -> HeldOutputBytes:
        return cls(config.per_caller, config.total)

    def __len__(self) -> int:
        return self._count

    def held_by(self, caller: str) -> int:
        return self._held.get(caller, 0)

    def room(self, caller: str, what: str = "output") -> tuple[int, str]:
        """The bytes `caller`'s runs may still hold, and the step's error past them (naming the tighter bound and
        `what` would pass it: a step's "output", or its "result")."""
        own, everyone = self.per_caller - self.held_by(caller), self.total - self._count
        if own <= everyone:
            held = (
                f"this caller's running workflows hold {self.held_by(caller) / MIB:.1f} MiB of step results and outputs"
            )
            return (
                own,
                f"{held}, and this {what} would pass {self.per_caller / MIB:.0f} MiB ({HELD_SETTING}.per_caller)",
            )
        held = f"the gateway's running workflows hold {self._count / MIB:.1f} MiB of step results and outputs"
        return everyone, f"{held}, and this {what} would pass {self.total / MIB:.0f} MiB ({HELD_SETTING}.total)"

    def charge(self, caller: str, size: int, what: str = "output") -> str | None:
        """`size` more bytes held by `caller`'s runs; or why not (nothing is charged then)."""
        room, refusal = self.room(caller, what)
        if size > room:
            return refusal
        self._held[caller] = self.held_by(caller) + size
        self._count += size
        return None

    def release(self, caller: str, size: int) -> None:
        held = self.held_by(caller) - size
        if held > 0:
            self._held[caller] = held
        else:
            self._held.pop(caller, None)
        self._count -= size
