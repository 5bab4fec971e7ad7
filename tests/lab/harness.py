"""`Lab`: what every namespace lab shares: an id, a work dir, a process registry, namespaces, and
a teardown that ends every process by PID and deletes every namespace, also on errors."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.lab.exabgp import Exabgp
from tests.lab.netns import Netns, unique_lab_id
from tests.lab.processes import ProcessRegistry

KEEP_ENV = "ANYCAST_LAB_KEEP"
# ExaBGP gives its API processes 2 s after SIGTERM before killing them.
TERM_GRACE_S = 5.0
LOG_SUFFIXES = frozenset({".log", ".stdout", ".stderr", ".api-in"})


class Lab:
    """Subclasses build in `_build` (namespaces through `_add_netns`, files in `workdir`) and
    name the ExaBGPs to stop first in `_exabgps`. `with Lab() as lab:` builds and tears down;
    a failure adds the kept work dir and the logs' tails to the exception as a note."""

    def __init__(self) -> None:
        self.lab_id = unique_lab_id()
        self.registry = ProcessRegistry()
        self.netns: list[Netns] = []
        self._workdir: Path | None = None
        self.closed = False

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError(f"{type(self).__name__} not built: use `with` or call build()")
        return self._workdir

    def __enter__(self) -> Self:
        self.build()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        notes = self.close(failed=exc is not None)
        if exc is not None and notes:
            exc.add_note(notes)

    def build(self) -> None:
        try:
            # A short path under /tmp: BIRD's control socket path must fit in sun_path (108 B).
            self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.lab_id}-", dir="/tmp"))
            self._build()
        except BaseException as exc:
            exc.add_note(self.close(failed=True))
            raise

    def _build(self) -> None:
        raise NotImplementedError

    def _exabgps(self) -> Iterable[tuple[str, Exabgp]]:
        """(label, ExaBGP) pairs to stop before anything else: they close their sessions."""
        return ()

    def _add_netns(self, name: str) -> Netns:
        ns = Netns.create(name, self.registry)
        self.netns.append(ns)
        return ns

    def log_report(self, lines: int = 25) -> str:
        """Tails of every log in the work dir, for failure output."""
        if self._workdir is None or not self._workdir.exists():
            return ""
        parts = []
        for path in sorted(self._workdir.iterdir()):
            if path.suffix in LOG_SUFFIXES:
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} (last {lines} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    def close(self, failed: bool = False) -> str:
        """End every process, delete every namespace; keep the work dir if `failed`.

        Returns a note for failure reports (where the logs are, and their tails).
        Raises only if cleanup itself failed and nothing else is being raised.
        """
        if self.closed:
            return ""
        self.closed = True
        problems: list[str] = []
        report = self.log_report() if failed else ""
        killed: list[str] = []
        for label, exa in self._exabgps():
            if exa.running:
                try:
                    exa.stop(grace_s=TERM_GRACE_S)
                except Exception as exc:
                    problems.append(f"stopping {label}: {exc!r}")
            if exa.lost_sigterms:
                killed.append(f"{label} needed {exa.lost_sigterms} extra SIGTERM(s)")
        try:
            # Needing SIGKILL is reported with a failure but is not one: agent tests assert
            # shutdown deadlines themselves.
            killed += self.registry.terminate_all(grace_s=TERM_GRACE_S)
        except Exception as exc:
            problems.append(f"terminating processes: {exc!r}")
        for ns in reversed(self.netns):
            try:
                ns.delete()
            except Exception as exc:
                problems.append(f"deleting {ns.name}: {exc!r}")
        keep = failed or os.environ.get(KEEP_ENV) == "1"
        if self._workdir is not None and not keep:
            shutil.rmtree(self._workdir, ignore_errors=True)
        if problems and not failed:
            raise RuntimeError(f"{type(self).__name__} teardown: " + "; ".join(problems))
        if not failed:
            return ""
        return "\n".join(
            [f"lab {self.lab_id} work dir kept: {self._workdir}", *problems, *killed, report]
        )
