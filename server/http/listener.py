"""An aiohttp application served on the server's event loop (or, standalone, a loop of its own).

The HTTP/JSON shim and the TensorFlow Serving REST API both listen this way:
`start()` binds (raising OSError naming the setting when the port is taken),
`stop(grace)` stops accepting, lets in-flight requests finish within the grace
period and closes. Subclasses build the application in `application()`.
Given the App's loop they share it with the gRPC server; without one (tests
of the shim alone) they run a loop in a thread of their own.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading

from aiohttp import web

log = logging.getLogger("server.http")


def split_address(address: str, setting: str = "HTTP_SERVER_ADDRESS") -> tuple[str | None, int]:
    """("host" or None for every interface, port) of "host:port" / "[v6]:port"."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"{setting}: expected host:port, got {address!r}")
    host = host.strip("[]")
    return (host or None), int(port)


class LoopServer:
    """Serves `application()` on `address` from a thread of its own."""

    def __init__(
        self,
        address: str,
        setting: str,
        thread_name: str,
        ssl_context: ssl.SSLContext | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.setting = setting
        self.shared_loop = loop
        self.reuse_port = False  # SO_REUSEPORT: several server processes on one port (SERVER_PROCESSES)
        self.thread_name = thread_name
        self.host, self.port = split_address(address, setting)
        self.ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        raise NotImplementedError

    def start(self) -> None:
        """Listen (on the shared loop, else a new one in its own thread); OSError when the port is taken."""
        if self.shared_loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._open(), self.shared_loop).result()
            except OSError as exc:
                raise OSError(f"cannot listen on {self.host or ''}:{self.port} ({self.setting}): {exc}") from exc
            self._loop = self.shared_loop
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self.thread_name, daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), loop).result()
        except BaseException as exc:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            if isinstance(exc, OSError):
                raise OSError(f"cannot listen on {self.host or ''}:{self.port} ({self.setting}): {exc}") from exc
            raise
        self._loop, self._thread = loop, thread

    async def _open(self) -> None:
        # handler_cancellation: a client that goes away cancels its call (the
        # context turns inactive and its callbacks run), as over gRPC.
        self._runner = web.AppRunner(
            self.application(), access_log=None, handle_signals=False, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self.ssl_context, reuse_port=self.reuse_port or None
        )
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def bound(self) -> str:
        """host:port as bound, for logs (a wildcard host stays a wildcard)."""
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def address(self) -> str:
        """host:port to connect to (127.0.0.1 for a wildcard host)."""
        host = self.host if self.host not in (None, "0.0.0.0", "::") else "127.0.0.1"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish within `grace` seconds, then close."""
        loop, thread = self._loop, self._thread
        if loop is not None and loop is self.shared_loop:
            self._loop = None
            try:
                asyncio.run_coroutine_threadsafe(self._close(grace), loop).result(timeout=grace + 10)
            except Exception as exc:
                log.warning("%s: shutdown did not finish cleanly: %s", self.setting, exc)
            self.stopped()
            return
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self._close(grace), loop).result(timeout=grace + 10)
        except Exception as exc:
            log.warning("%s: shutdown did not finish cleanly: %s", self.setting, exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
        self.stopped()

    async def close(self, grace: float) -> None:
        """`stop()` from the shared loop itself."""
        if self._loop is None:
            return
        self._loop = None
        try:
            await self._close(grace)
        finally:
            self.stopped()

    def stopped(self) -> None:
        """Called once the loop has stopped (release thread pools here)."""

    async def _close(self, grace: float) -> None:
        runner = self._runner
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            await runner.server.shutdown(grace)
        await runner.cleanup()
