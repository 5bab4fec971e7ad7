"""The few error types the agent raises; each carries the bad value it is about."""

from __future__ import annotations


class AgentError(Exception):
    """Base of the agent's own errors."""


class ConfigError(AgentError):
    """A config file that cannot be used, with every problem found in it."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class SpeakerError(AgentError):
    """ExaBGP refused a command, or did not answer it in time."""

    def __init__(self, command: str, answer: str) -> None:
        self.command = command
        self.answer = answer
        super().__init__(f"ExaBGP answered {answer!r} to {command!r}")


class RenderError(AgentError):
    """A value that must never reach ExaBGP's command channel (control character, non-ASCII...)."""
