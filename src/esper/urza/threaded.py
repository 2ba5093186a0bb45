"""Serve an ASGI app (Urza) with uvicorn in a background thread on a loopback port.

``esper run`` uses it to host the embedded Urza inside the run's process, where the forge's
worker processes reach it over HTTP like any other client. The socket is bound before the
thread starts, so the port is known (and taken) at once; port 0 picks a free one.
"""

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

STARTUP_TIMEOUT_SECONDS = 30.0
SHUTDOWN_TIMEOUT_SECONDS = 20.0


class ThreadedServer:
    """uvicorn on ``host:port`` in a daemon thread.

    Args:
        app: The application.
        host: Address to bind (loopback by default).
        port: Port to bind; 0 picks a free one.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind the socket (the server starts with :meth:`start`)."""
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"esper-urza-{self.port}",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start serving and wait until requests are accepted.

        Raises:
            RuntimeError: When the server fails to start within the timeout.
        """
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the Urza server thread exited during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Urza did not start within {STARTUP_TIMEOUT_SECONDS:.0f} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop serving (gracefully, then forcibly) and release the port.

        Raises:
            RuntimeError: When the thread does not end.
        """
        self._server.should_exit = True
        self._thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError("the Urza server thread did not stop")
