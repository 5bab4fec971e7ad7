"""The ExaBGP side: the text command grammar, the ack-tracking channel and the stdio transport."""

from __future__ import annotations

import asyncio
from typing import Protocol

from anycast_agent.errors import SpeakerError
from anycast_agent.model import NeighborState, RouteAttrs, RouteKey
from anycast_agent.speaker.grammar import (
    SHOW_ADJ_RIB_OUT,
    SHOW_NEIGHBORS,
    Ack,
    Inbound,
    parse_adj_rib_out,
    parse_neighbor_summary,
)


class Speaker(Protocol):
    """What the agent needs from the ExaBGP channel (the real one, or the dry-run printer)."""

    closed: asyncio.Event
    events: asyncio.Queue[Inbound]

    async def read_forever(self) -> None: ...
    async def send(self, line: str, *, timeout_s: float | None = None) -> Ack: ...
    async def show(self, line: str, *, timeout_s: float = 5.0) -> list[str]: ...


async def held_routes(speaker: Speaker) -> dict[RouteKey, RouteAttrs]:
    """The routes ExaBGP holds now (its adj-rib-out); raises SpeakerError."""
    return parse_adj_rib_out(await speaker.show(SHOW_ADJ_RIB_OUT))


async def learn(speaker: Speaker) -> tuple[dict[str, NeighborState], dict[RouteKey, RouteAttrs]]:
    """What ExaBGP knows at the agent's start (a respawned process gets no state messages):
    the sessions and the routes it holds (DESIGN §3.6). Raises SpeakerError saying which
    question went unanswered."""
    try:
        summary = await speaker.show(SHOW_NEIGHBORS)
    except SpeakerError as exc:
        raise SpeakerError(
            exc.command,
            f"{exc.answer}: ExaBGP does not acknowledge commands; the agent needs "
            "exabgp.api.ack=true (ExaBGP's default)",
        ) from None
    return parse_neighbor_summary(summary), await held_routes(speaker)
