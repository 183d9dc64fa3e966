"""The broker socket's writer: frames written over consecutive turns of the loop go out
as one send, in order, and none waits long."""

from __future__ import annotations

import asyncio

from services.broker.frames import MAX_WAIT_S, QUIET_TURNS, TurnWriter


class Recorder(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.sent_at: list[float] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        self.sent_at.append(asyncio.get_running_loop().time())

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0


def _writer() -> tuple[TurnWriter, Recorder]:
    loop = asyncio.get_running_loop()
    transport = Recorder()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    protocol.connection_made(transport)
    return TurnWriter(transport, protocol, reader, loop), transport


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_frames_written_every_other_turn_go_out_as_one_send_in_order() -> None:
    writer, transport = _writer()
    for i in range(50):
        writer.write(b"frame%d;" % i)
        await _turns(2)  # as a batch's publishes reach aiormq's writer
    assert transport.sends == []
    await _turns(QUIET_TURNS + 1)
    assert transport.sends == [b"".join(b"frame%d;" % i for i in range(50))]
    writer.close()


async def test_a_lone_frame_goes_out_once_the_loop_has_nothing_more_to_add() -> None:
    writer, transport = _writer()
    writer.write(b"heartbeat")
    await _turns(QUIET_TURNS + 1)
    assert transport.sends == [b"heartbeat"]
    writer.close()


async def test_under_a_steady_stream_no_frame_waits_much_longer_than_the_bound() -> None:
    writer, transport = _writer()
    loop = asyncio.get_running_loop()
    written_at: list[float] = []
    while not written_at or loop.time() - written_at[0] < 100 * MAX_WAIT_S:
        writer.write(b"x")
        written_at.append(loop.time())
        await _turns(1)  # never QUIET_TURNS without a write
    await _turns(QUIET_TURNS + 1)
    assert b"".join(transport.sends) == b"x" * len(written_at)
    first = 0
    waits = []
    for data, at in zip(transport.sends, transport.sent_at, strict=True):
        waits.append(at - written_at[first])
        first += len(data)
    assert max(waits) < 10 * MAX_WAIT_S  # a turn's slack; the stream lasted 100 times it
    writer.close()


async def test_drain_and_close_send_what_is_waiting_first() -> None:
    writer, transport = _writer()
    writer.write(b"publish")
    await writer.drain()
    assert transport.sends == [b"publish"]
    writer.write(b"close-ok")
    writer.close()
    assert transport.sends == [b"publish", b"close-ok"]
    assert transport.closed


async def test_nothing_is_written_to_a_transport_already_closing() -> None:
    writer, transport = _writer()
    writer.write(b"late")
    transport.closed = True
    await _turns(QUIET_TURNS + 1)
    assert transport.sends == []
    writer.close()
