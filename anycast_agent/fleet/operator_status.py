"""`anycast-agent fleet status`: the fleet as its keys show it, as a JSON document and as the
tables the command prints."""

from __future__ import annotations

import json

from anycast_agent.client import clean, table
from anycast_agent.core.fleet_intents import ramp_share
from anycast_agent.fleet.operator_view import (
    Snapshot,
    Value,
    applied_rev,
    ascii_text,
    ramp_fields,
    value_of,
)


def status_document(
    snap: Snapshot, prefix: str, region: str | None = None, service: str | None = None
) -> Value:
    """The fleet as `fleet status --json` shows it (the text view formats this). A PoP is
    silent for a service when it says S or is registered without a state for it."""
    pops = {p: i for p, i in snap.pops().items() if region is None or i.region == region}
    ctl_rev = snap.ctl_revision()
    ctl: list[Value] = []
    for key, kv in sorted(snap.under("ctl/").items()):
        entry: Value = {**(value_of(kv) or {"value": ascii_text(kv.value)}), "key": key}
        entry["expiring"] = bool(kv.lease)
        if key.startswith("ramp/") and (ramp := ramp_fields(entry)):
            entry["active"] = sorted(ramp_share(ramp[2], ramp[1], ramp[0]))
        ctl.append(entry)
    budget = value_of(snap.keys.get("ctl/budget")) or {}
    names = sorted(snap.services() if service is None else {service})
    return {
        "prefix": prefix,
        "revision": snap.revision,
        "ctl_revision": ctl_rev,
        "frozen": "ctl/freeze" in snap.keys,
        "budget": {
            "source": "ctl/budget" if budget else "agent default",
            "slots": budget.get("slots"),
            "window_s": budget.get("window_s"),
            "taken": {
                n: ascii_text(kv.value) for n, kv in sorted(snap.under("budget/slot/").items())
            },
        },
        "pops": {
            p: {
                "region": i.region,
                "version": i.version,
                "mode": i.mode,
                "ctl_rev_applied": i.ctl_rev_applied,
                "applied": applied_rev(i) >= ctl_rev,
            }
            for p, i in sorted(pops.items())
        },
        "not_applied": sorted(p for p, i in pops.items() if applied_rev(i) < ctl_rev),
        "ctl": ctl,
        "services": [_service(snap, name, set(pops), region is None) for name in names],
    }


def _service(snap: Snapshot, name: str, pops: set[str], everywhere: bool) -> Value:
    states = {p: s for p, s in snap.states(name).items() if everywhere or p in pops}
    by = {letter: sorted(p for p, s in states.items() if s == letter) for letter in "ADWS"}
    unpublished = sorted(pops - set(states))
    silent = sorted(by["S"] + unpublished)
    policy = value_of(snap.keys.get(f"ctl/policy/{name}"))
    return {
        "name": name,
        "min_pops": None if policy is None else policy.get("min_pops"),
        "min_pops_source": "agent default" if policy is None else "ctl/policy",
        "announcing": by["A"],
        "depreferred": by["D"],
        "withdrawn": by["W"],
        "silent": silent,
        "unpublished": unpublished,
        "counts": {x: len(by[x]) for x in "ADWS"} | {"silent": len(silent)},
        "ctl": [k for k in sorted(snap.under("ctl/")) if _for(k, name)],
    }


def _for(key: str, service: str) -> bool:
    """Whether the `ctl/` key is an intent, ramp or override that can apply to `service`."""
    match key.split("/"):
        case ["intent" | "ramp", *_, "service", name] | ["override", name, _]:
            return name == service
        case ["intent" | "ramp", *_]:
            return True
    return False


def format_status(doc: dict[str, object]) -> str:
    """`status_document` as the tables `fleet status` prints."""
    pops, budget, lagging, services, ctl = (
        doc["pops"],
        doc["budget"],
        doc["not_applied"],
        doc["services"],
        doc["ctl"],
    )
    assert isinstance(pops, dict) and isinstance(budget, dict) and isinstance(lagging, list)
    assert isinstance(services, list) and isinstance(ctl, list)
    lines = [f"fleet {doc['prefix']}  revision {doc['revision']}  ctl/ at {doc['ctl_revision']}"]
    if doc["frozen"]:
        lines.append("FROZEN: every health withdraw is refused (see ctl/freeze below)")
    slots = budget["slots"] or "agent default"
    window = f", window {budget['window_s']:g}s" if budget["window_s"] else ""
    taken = ", ".join(f"{n} {v}" for n, v in budget["taken"].items())
    lines.append(
        f"budget: {len(budget['taken'])} of {slots} slots taken{window}"
        + (f": {taken}" if taken else "")
    )
    lag = ", ".join(f"{p} (at {pops[p]['ctl_rev_applied']})" for p in lagging)
    lines.append(
        f"PoPs: {len(pops)} registered, {len(pops) - len(lagging)} applied the latest ctl/ change"
        + (f"; not applied: {lag}" if lag else "")
    )
    rows = [("SERVICE", "K", "A", "D", "W", "SILENT", "INTENTS / RAMPS / OVERRIDES")]
    notes = []
    for s in services:
        k = "default" if s["min_pops"] is None else str(s["min_pops"])
        counts = [str(s["counts"][x]) for x in ("A", "D", "W", "silent")]
        rows.append((s["name"], k, *counts, ", ".join(s["ctl"]) or "-"))
        for what, label in (("depreferred", "de-preferred"), ("withdrawn", ""), ("silent", "")):
            if s[what]:
                notes.append(f"  {s['name']} {label or what}: {', '.join(s[what])}")
    lines += ["", *table(rows), *notes]
    if ctl:
        keys = [("CTL/ KEY", "WHAT", "REASON", "AUTHOR", "EXPIRES")]
        for e in ctl:
            expires = "lease" if e["expiring"] else "-"
            keys.append((e["key"], _what(e), str(e.get("reason")), str(e.get("author")), expires))
        lines += ["", *table(keys)]
    return "\n".join(clean(line) for line in lines) + "\n"


def _what(entry: dict[str, object]) -> str:
    """A `ctl/` key's value in a few words."""
    kind = str(entry["key"]).split("/")[0]
    match kind:
        case "intent":
            return f"{entry.get('action')}" + (f" {entry['med']}" if "med" in entry else "")
        case "ramp":
            active, members = entry.get("active"), entry.get("members")
            if isinstance(active, list) and isinstance(members, list):
                return f"{entry.get('percent')}%: {len(active)}/{len(members)} active"
        case "policy":
            return f"K = {entry.get('min_pops')}"
        case "budget":
            window = entry.get("window_s")
            per = f"{window:g}" if isinstance(window, int | float) else str(window)
            return f"{entry.get('slots')} slots per {per}s"
        case "freeze":
            return "frozen"
        case "override":
            return "may withdraw below K"
    return json.dumps(entry.get("value", "?"), sort_keys=True, ensure_ascii=True)
