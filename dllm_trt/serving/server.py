"""Running the FastAPI app with uvicorn: in the foreground (``dllm-trt serve``) or in a background
thread (tests, benchmarks/serve_load.py). The socket is bound first, so port 0 gives a free port
whose number is known before any request."""
from __future__ import annotations

import errno
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import DllmError


def bind(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as e:  # say which option to change: the port (taken, privileged) or the host (not this machine's)
        if e.errno == errno.EADDRINUSE:
            fix = "pick another --port (0: any free one)"
        elif e.errno == errno.EACCES:
            fix = "ports below 1024 need privileges; pick another --port (0: any free one)"
        else:
            fix = f"--host {host} is not an address of this machine; use 127.0.0.1, 0.0.0.0 or one of its addresses"
        raise DllmError(f"cannot listen on {host}:{port}: {e.strerror or e}; {fix}") from None
    sock.set_inheritable(True)
    return sock


def _server(app: Any, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=5,
                            access_log=False)
    return uvicorn.Server(config)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


@dataclass
class ServerThread:
    """A uvicorn server running in a daemon thread; ``stop()`` shuts it down."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> ServerThread:
    sock = bind(host, port)
    server = _server(app, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dllm-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DllmError("the HTTP server did not start")
        time.sleep(0.01)
    return ServerThread(url_of(sock), server, thread)


def serve_forever(app: Any, sock: socket.socket, log_level: str = "info") -> None:
    """Serve until Ctrl-C / SIGTERM (uvicorn handles both and finishes open responses)."""
    _server(app, log_level).run(sockets=[sock])
