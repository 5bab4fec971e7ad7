"""The command channel against a scripted ExaBGP: acks, show output, events, late acks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from anycast_agent.errors import SpeakerError
from anycast_agent.speaker.channel import Channel
from anycast_agent.speaker.grammar import Ack, StateEvent

UP = (
    '{ "exabgp": "5.0.0", "type": "state", "neighbor": { "address": { "local": "198.51.100.2", '
    '"peer": "198.51.100.1" }, "state": "up" } }'
)


class Script:
    """Feeds the channel's stdin; `on_write` decides what ExaBGP answers to each line."""

    def __init__(self, answer: Callable[[str], list[str]]) -> None:
        self.reader = asyncio.StreamReader()
        self.written: list[str] = []
        self.answer = answer

    async def write(self, data: bytes) -> None:
        line = data.decode().rstrip("\n")
        self.written.append(line)
        self.feed(*self.answer(line))

    def feed(self, *lines: str) -> None:
        for line in lines:
            self.reader.feed_data(f"{line}\n".encode())


async def started(script: Script, **kw: float) -> tuple[Channel, asyncio.Task[None]]:
    channel = Channel(script.reader, script.write, **kw)
    return channel, asyncio.get_running_loop().create_task(channel.read_forever())


async def test_ack_show_and_events() -> None:
    def answer(line: str) -> list[str]:
        if line == "show neighbor summary":
            return [
                "Peer   AS  up/down state | #sent #recvd",
                UP,
                "198.51.100.1 65000 0:01 established 1 1",
                "done",
            ]
        return ["error" if "bogus" in line else "done"]

    script = Script(answer)
    channel, reader = await started(script)
    assert await channel.send("neighbor 198.51.100.1 withdraw route 192.0.2.10/32") is Ack.DONE
    assert await channel.send("bogus") is Ack.ERROR
    out = await channel.show("show neighbor summary")
    assert out[1] == "198.51.100.1 65000 0:01 established 1 1"
    event = channel.events.get_nowait()  # JSON in the middle of show output is an event
    assert isinstance(event, StateEvent) and event.neighbor == "198.51.100.1"
    assert channel.sent == 3 and channel.acked == {Ack.DONE: 2, Ack.ERROR: 1}
    script.reader.feed_eof()
    await reader
    assert channel.closed.is_set()


async def test_a_late_ack_is_never_taken_for_the_next_command() -> None:
    answers: dict[str, list[str]] = {"first": [], "second": ["error"]}

    def answer(line: str) -> list[str]:
        if line == "show neighbor summary":
            # The late `done` of "first" arrives now, before the barrier's own output.
            return ["done", "Peer            AS        up/down state", "done"]
        return answers[line]

    script = Script(answer)
    channel, reader = await started(script, ack_timeout_s=0.05)
    with pytest.raises(SpeakerError, match=r"no ack within 0\.05s"):
        await channel.send("first")
    # Without the barrier, the late `done` would be returned for "second".
    assert await channel.send("second") is Ack.ERROR
    assert script.written == ["first", "show neighbor summary", "second"]
    reader.cancel()


async def test_eof_fails_the_pending_command() -> None:
    script = Script(lambda line: [])
    channel, reader = await started(script, ack_timeout_s=5)
    pending = asyncio.get_running_loop().create_task(channel.send("anything"))
    await asyncio.sleep(0)
    script.reader.feed_eof()
    with pytest.raises(SpeakerError, match="EOF"):
        await pending
    await reader
    with pytest.raises(SpeakerError, match="closed"):
        await channel.send("more")


@pytest.mark.parametrize("arrival", ["whole", "in-pieces"])
async def test_an_overlong_line_from_exabgp_is_skipped_not_fatal(arrival: str) -> None:
    script = Script(lambda line: ["done"])
    script.reader = asyncio.StreamReader(limit=1024)
    channel, reader = await started(script)
    long_line = b'{"type": "update", "junk": "' + b"x" * 5000 + b'"}\n'
    if arrival == "whole":
        script.reader.feed_data(long_line)
    else:
        for i in range(0, len(long_line), 700):  # the end arrives after the limit is passed
            script.reader.feed_data(long_line[i : i + 700])
            await asyncio.sleep(0)
    script.feed(UP)
    event = await asyncio.wait_for(channel.events.get(), 2)
    assert isinstance(event, StateEvent)  # the line after it is read, intact
    assert await channel.send("neighbor 198.51.100.1 withdraw route 192.0.2.10/32") is Ack.DONE
    assert not reader.done()
    reader.cancel()
