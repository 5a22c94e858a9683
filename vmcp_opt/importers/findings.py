"""What an import could not carry over, kept by the foreign document's own path so a user can find each item."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Findings:
    """`left_out` decides the exit code (1 when any); `notes` and `variables` are advice that changes nothing."""

    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)  # environment variable -> what it must hold

    def skip(self, path: str, why: str) -> None:
        self.left_out.append(f"{path}: {why}")

    def note(self, path: str, what: str) -> None:
        self.notes.append(f"{path}: {what}")

    def needs(self, variable: str, holds: str) -> None:
        self.variables.setdefault(variable, holds)
