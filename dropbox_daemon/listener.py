"""The status page's socket side: a threading HTTP server with a ceiling on connections,
and which Host headers a listener without a token answers (web.py serves the requests)."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

MAX_CONNECTIONS = 64  # open at once; a new one evicts the oldest still sending its request
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a ceiling on connections: idle sockets cannot exhaust the
    daemon's descriptors or threads (systemd's LimitNOFILE), and a fresh request (a health
    probe) is served by closing the oldest connection that is still only sending its head."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.guard = threading.Lock()
        self.open: dict[Any, float] = {}  # socket -> when accepted
        self.heads: set[Any] = set()  # sockets still reading their request

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.guard:
            if len(self.open) >= MAX_CONNECTIONS:
                idle = sorted(
                    (t, id(sock), sock) for sock, t in self.open.items() if sock in self.heads
                )
                if not idle:
                    self.shutdown_request(request)  # every slot is answering: try again
                    return
                _t, _id, oldest = idle[0]
                self.heads.discard(oldest)
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)  # its thread's read ends; it closes
            self.open[request] = time.monotonic()
            self.heads.add(request)
        super().process_request(request, client_address)

    def close_request(self, request: Any) -> None:
        with self.guard:
            self.open.pop(request, None)
            self.heads.discard(request)
        super().close_request(request)

    def head_read(self, request: Any) -> None:
        with self.guard:
            self.heads.discard(request)


def allowed_hosts(listen: str) -> set[str]:
    """Host header values a browser sends for this listener, when it has no token: the
    loopback names and the address it listens on (a DNS-rebinding page sends its own name)."""
    host, port = listen.rsplit(":", 1)
    names = {*LOOPBACK_HOSTS, host}
    return names | {f"{n}:{port}" for n in names}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
