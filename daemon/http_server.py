"""The HTTP server of the daemon and of its serving processes: uvicorn, with a deadline on each
request's arrival.

uvicorn times out idle keep-alive connections but not a request that never finishes arriving:
a client that opens a socket and sends nothing, or a header a byte every few seconds, holds it
for ever (slowloris). So each connection gets ``request_timeout_s`` for its request's headers
and body to arrive, counted from when it opened or from its previous answer; the clock stops
once the request is complete (answering it takes what it takes) and the connection is closed
when it runs out, counted in ``tagspace_api_requests_timed_out_total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from daemon.config import Settings
from daemon.metrics import Metrics

log = logging.getLogger(__name__)


def deadline_protocol(timeout_s: float, on_timeout: Callable[[], None]) -> type[asyncio.Protocol]:
    class RequestDeadline(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_complete(self) -> None:  # the whole request has arrived
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.pipeline and not self.transport.is_closing():
                self._arm()  # for the next request on this connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                log.debug("closing %s: no complete request within %.1f s", self.client,
                          timeout_s)
                on_timeout()
                self.transport.close()

    return RequestDeadline


def server_config(app: Any, settings: Settings, metrics: Metrics, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
        http=deadline_protocol(settings.request_timeout_s, metrics.api_timeouts.inc), **kwargs)
