"""The fleet as its etcd keys show it, for the operator's commands (`operator`) and `fleet
status` (`operator_status`): every key at one revision, what a `ctl/` key is about, and the
values read as JSON objects, tolerant of anything a key may hold."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from anycast_agent.fleet.etcd_http import KeyValue

Value = dict[str, object]


@dataclass(frozen=True, slots=True)
class Scope:
    """What a `ctl/` key is about: a PoP, a region or a service (intents); a region, a service
    or a region's service (ramps)."""

    pop: str | None = None
    region: str | None = None
    service: str | None = None

    @property
    def path(self) -> str:
        named = (("pop", self.pop), ("region", self.region), ("service", self.service))
        return "/".join(f"{kind}/{name}" for kind, name in named if name)

    def intent_key(self) -> str:
        if sum(x is not None for x in (self.pop, self.region, self.service)) != 1:
            raise ValueError("an intent is for exactly one of --pop, --region or --service")
        return f"ctl/intent/{self.path}"

    def ramp_key(self) -> str:
        if self.pop is not None or (self.region is None and self.service is None):
            raise ValueError("a ramp is for --region, --service or both (not a PoP)")
        return f"ctl/ramp/{self.path}"


@dataclass(frozen=True, slots=True)
class PopInfo:
    """`pops/<pop>` as an agent wrote it; fields it lacks are "" or None."""

    region: str
    version: str
    mode: str
    ctl_rev_applied: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every key under the prefix at one revision, by name relative to the prefix."""

    revision: int
    keys: Mapping[str, KeyValue]

    def under(self, folder: str) -> dict[str, KeyValue]:
        return {k.removeprefix(folder): v for k, v in self.keys.items() if k.startswith(folder)}

    def pops(self) -> dict[str, PopInfo]:
        out = {}
        for pop, kv in self.under("pops/").items():
            value = value_of(kv) or {}
            rev = value.get("ctl_rev_applied")
            rev = rev if isinstance(rev, int) and not isinstance(rev, bool) else None
            text = [
                v if isinstance(v := value.get(f), str) else ""
                for f in ("region", "version", "mode")
            ]
            out[pop] = PopInfo(text[0], text[1], text[2], rev)
        return out

    def states(self, service: str) -> dict[str, str]:
        """PoP → "A" / "D" / "W" / "S" (anything else as "S": it does not count)."""
        raw = self.under(f"svc/{service}/pop/")
        return {
            p: (s if (s := ascii_text(kv.value)) in ("A", "D", "W", "S") else "S")
            for p, kv in raw.items()
        }

    def services(self) -> set[str]:
        """Every service a state or a `ctl/` key names."""
        names = {k.split("/")[0] for k in self.under("svc/")}
        for key in self.under("ctl/"):
            match key.split("/"):
                case ["intent" | "ramp", *_, "service", name] | ["override" | "policy", name, *_]:
                    names.add(name)
        return names

    def ctl_revision(self) -> int:
        """The latest change among the `ctl/` keys that exist (a delete leaves no trace)."""
        return max((kv.mod_revision for kv in self.under("ctl/").values()), default=0)

    def in_scope(self, scope: Scope) -> set[str]:
        """The PoPs a change of `scope` is for: the named PoP, else the registered PoPs of the
        region and/or with a state for the service."""
        if scope.pop is not None:
            return {scope.pop}
        pops = self.pops()
        chosen = set(pops)
        if scope.region is not None:
            chosen = {p for p in chosen if pops[p].region == scope.region}
        if scope.service is not None:
            chosen &= set(self.under(f"svc/{scope.service}/pop/"))
        return chosen


def ramp_fields(value: Value | None) -> tuple[float, str, list[str]] | None:
    """(percent, salt, members) of a ramp key's value; None when it is not one."""
    v = value or {}
    percent, salt, members = v.get("percent"), v.get("salt"), v.get("members")
    if (
        isinstance(percent, bool)
        or not isinstance(percent, int | float)
        or not isinstance(salt, str)
    ):
        return None
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        return None
    return float(percent), salt, members


def applied_rev(info: PopInfo | None) -> int:
    return 0 if info is None or info.ctl_rev_applied is None else info.ctl_rev_applied


def encode(value: Value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def value_of(kv: KeyValue | None) -> Value | None:
    """A key's JSON object; None when absent or not an object."""
    if kv is None:
        return None
    try:
        value = json.loads(kv.value)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def describe(kv: KeyValue | None) -> str:
    if kv is None:
        return "nothing (deleted)"
    shown = ascii_text(kv.value)[:300] or "an empty value"
    lease = ", with an expiry lease" if kv.lease else ""
    return f"{shown} (revision {kv.mod_revision}{lease})"


def ascii_text(raw: bytes) -> str:
    """Key values as a terminal may show them: printable text, anything else as '?'."""
    text = raw.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)
