"""Dated sections of docs/performance.md, each written by a partial bench run (its parts name it).

A full `make bench` rewrites the document and keeps these sections after it; a partial run
replaces the section of the same parts, or appends one. Every section carries its own date,
command and runtime, so its figures are never read as the full run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BEGIN = (
    "<!-- dated section {key}: written by `python -m bench --parts {key}`, kept by `make bench` -->"
)
END = "<!-- end of dated section {key} -->"
_BEGIN_HEAD = "<!-- dated section "


def _key(parts: Sequence[str]) -> str:
    return ",".join(sorted(parts))


def dated_section(result: dict[str, Any], table: str, results_file: str) -> str:
    """The section of one partial run: its date, command, runtime, machine, load and tables."""
    key = _key(result["plan"]["parts"])
    m, v, load = result["machine"], result["versions"], result["loadavg"]
    return f"""{BEGIN.format(key=key)}
## Parts {key}, measured alone ({result["date"]})

`{result["command"]}`, {result["date"]}, ran {result["runtime_s"]} s. The figures are
copied by the bench from that run ({results_file}) and never edited by hand.

Machine: {m["cores"]} cores, {m["cpu_model"]}, kernel {m["kernel"]}; Python {v["python"]};
{v.get("haproxy", "HAProxy -")}. Other jobs may share the machine (1-minute load average
{load["before"]} at the start, {load["after"]} at the end): compare figures within this run,
side by side, not with another run's.

{table}
{END.format(key=key)}
"""


def with_dated_section(doc: str, parts: Sequence[str], section: str) -> str:
    """`doc` with the section of these parts replaced by `section` (appended when absent)."""
    key = _key(parts)
    begin, end = BEGIN.format(key=key), END.format(key=key)
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        return head + section + (("\n" + tail) if tail else "")
    return doc.rstrip("\n") + "\n\n" + section


def kept_dated_sections(doc: str) -> str:
    """Every dated section of `doc`, in order ("" when none), for a full run to keep."""
    kept = []
    rest = doc
    while _BEGIN_HEAD in rest:
        start = rest.index(_BEGIN_HEAD)
        key = rest[start + len(_BEGIN_HEAD) :].split(":", 1)[0]
        end = END.format(key=key)
        if end not in rest[start:]:
            break
        stop = rest.index(end, start) + len(end)
        kept.append(rest[start:stop])
        rest = rest[stop:]
    return "".join(f"\n{section}\n" for section in kept)
