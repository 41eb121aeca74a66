"""The twin's listening socket must hand out connections with Nagle off, or short TTFTs gain ~40 ms."""

from __future__ import annotations

import asyncio
import socket

from twin.launch import _listen_socket


async def test_accepted_connections_have_nodelay() -> None:
    listener = _listen_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=listener)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.read()  # the server closes after looking at its side
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert accepted and accepted[0] != 0
