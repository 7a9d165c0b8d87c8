"""Running the app: bind the address, serve with uvicorn, and on SIGTERM / SIGINT drain before exiting.

    sock = bind("127.0.0.1", 8000)       # first: a port in use fails in a second, before the model loads
    code = run(app, sock, drain_timeout_s=30, on_ready=print)   # -> 0 after a signal and a clean drain

The socket is bound but not listening while the model loads (connections are refused, not queued), and
uvicorn starts listening on it once the app is built; `on_ready(url)` is called then. Shutdown: the first
SIGTERM or SIGINT sets the app's `Drain` (vggdet/serve/app.py): /readyz and every new request answer 503
while the requests in flight (a video stream included) finish, for at most `drain_timeout_s`; then uvicorn
stops, the service closes (its queued work done) and `run` returns 0. A second signal stops at once
(exit 128 + the signal number). uvicorn's own handling would re-raise the signal after shutdown, ending the
process by the signal rather than with status 0, and would refuse new requests by closing the port
instead of answering them.
"""
from __future__ import annotations

import signal
import socket
import time
from typing import Callable, Optional

import uvicorn

__all__ = ["bind", "run", "url_of", "url_for"]


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening; ValueError naming the address if it cannot be."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise ValueError(f"--host {host}: not an address to listen on ({e})") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    return url_for(*sock.getsockname()[:2])


def url_for(host: str, port: int) -> str:
    """http://HOST:PORT (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server with our shutdown (see the module docstring) and a call once it listens."""

    def __init__(self, config: uvicorn.Config, drain, drain_timeout_s: float, on_ready: Callable[[], None]):
        super().__init__(config)
        self.drain, self.drain_timeout_s, self.on_ready = drain, drain_timeout_s, on_ready
        self.signal: Optional[int] = None
        self.deadline = 0.0
        self.in_flight_at_signal: Optional[int] = None  # announced at the next tick (no printing in a handler)

    def handle_exit(self, sig: int, frame) -> None:  # a signal handler: only set flags
        if self.signal is not None:
            self.should_exit = self.force_exit = True
            return
        self.signal, self.in_flight_at_signal = sig, self.drain.in_flight
        self.deadline = time.monotonic() + self.drain_timeout_s
        self.drain.draining = True

    async def on_tick(self, counter: int) -> bool:  # every 0.1 s
        if self.drain.draining:
            if self.in_flight_at_signal is not None:
                print(f"{signal.Signals(self.signal).name}: finishing {self.in_flight_at_signal} request(s) in flight "
                      "(new ones get 503), then stopping", flush=True)
                self.in_flight_at_signal = None
            if self.drain.in_flight == 0 or time.monotonic() > self.deadline:
                self.should_exit = True
        return await super().on_tick(counter)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_ready()


def run(app, sock: socket.socket, *, drain_timeout_s: float = 30.0, on_ready: Callable[[str], None] = print,
        access_log: bool = False) -> int:
    """Serve `app` on the bound `sock` until a signal; -> 0 after a drain, 128 + signal when forced."""
    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            lifespan="on", timeout_keep_alive=5, timeout_graceful_shutdown=drain_timeout_s + 5)
    server = _Server(config, app.state.drain, drain_timeout_s, lambda: on_ready(url_of(sock)))
    server.run(sockets=[sock])
    if server.force_exit:
        return 128 + (server.signal or signal.SIGTERM)
    return 0 if server.started else 1
