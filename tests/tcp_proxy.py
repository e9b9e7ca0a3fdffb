"""A loopback TCP proxy that can make connections die silently, for tests.

A "blackholed" connection keeps both sockets open but forwards nothing in either
direction and sends no FIN or RST: what a dead NAT entry or a pulled cable looks like
from the client's side. Nothing but the client's own deadline can notice it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream


class _Connection:
    def __init__(self) -> None:
        self.blackholed = False


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0  # connections accepted so far
        # new connections start blackholed too (as if the whole path went dark)
        self.blackhole_new = False
        self._live: set[_Connection] = set()
        self._accepted_changed = anyio.Event()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def blackhole_existing(self) -> int:
        """Silence every open connection; new ones still forward. Returns how many."""
        for conn in self._live:
            conn.blackholed = True
        return len(self._live)

    def blackhole_all(self) -> None:
        """Silence every open connection and every one opened from now on."""
        self.blackhole_new = True
        self.blackhole_existing()

    def restore_new(self) -> None:
        """Connections opened from now on forward again; silenced ones stay silent."""
        self.blackhole_new = False

    async def wait_accepted(self, n: int) -> None:
        """Until ``n`` connections were accepted in all (bound it with fail_after)."""
        while self.accepted < n:
            await self._accepted_changed.wait()

    async def _handle(self, client: SocketStream) -> None:
        conn = _Connection()
        conn.blackholed = self.blackhole_new
        self.accepted += 1
        self._accepted_changed.set()
        self._accepted_changed = anyio.Event()
        async with client:
            try:
                upstream = await anyio.connect_tcp(self.target_host, self.target_port)
            except OSError:
                return  # closing the client tells it the target is down
            self._live.add(conn)
            try:
                async with upstream, anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, client, upstream, conn, tg.cancel_scope)
                    tg.start_soon(self._pump, upstream, client, conn, tg.cancel_scope)
            finally:
                self._live.discard(conn)

    @staticmethod
    async def _pump(
        source: SocketStream, sink: SocketStream, conn: _Connection, scope: anyio.CancelScope
    ) -> None:
        try:
            async for data in source:
                if not conn.blackholed:
                    await sink.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        # one side is gone: close both, as a real path would
        scope.cancel()


@asynccontextmanager
async def tcp_proxy(target_port: int) -> AsyncIterator[TcpProxy]:
    """A running proxy on a free loopback port, forwarding to ``target_port``."""
    proxy = TcpProxy(target_port)
    listener: SocketListener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, proxy._handle)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
