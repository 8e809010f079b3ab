"""Running the proxy: uvicorn with a clean shutdown on SIGINT / SIGTERM."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from .config import ServeConfig

__all__ = ["run"]


def run(config: ServeConfig) -> int:
    """Serve ``config`` until SIGINT or SIGTERM; returns 0 after a clean shutdown (open
    requests are given ``timeout`` seconds to finish, then the upstream pool and the
    predictor's worker are closed)."""
    import uvicorn

    from .app import create_app

    level = config.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("clear_learn.serve").setLevel(level)
    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises a captured SIGTERM after its graceful shutdown, so that the
            # process would end "killed by SIGTERM"; a clean shutdown exits 0 instead
            with super().capture_signals():
                yield
                if isinstance(getattr(self, "_captured_signals", None), list):
                    self._captured_signals.clear()

    app = create_app(config)
    server = Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level.lower(),
        timeout_graceful_shutdown=max(1, int(config.timeout)), lifespan="on",
        access_log=False))
    server.run()
    return 0 if server.started else 1
