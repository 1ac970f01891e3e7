"""sd_notify: READY, STATUS and WATCHDOG datagrams to systemd over $NOTIFY_SOCKET.

Written against the protocol directly (a unix datagram socket, '@' meaning
the abstract namespace); outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket

from loguru import logger


class Notifier:
    """One connection to systemd's notify socket, if the service manager gave us one."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` lines in one datagram; False if there is no socket or it failed."""
        if self.sock is None:
            return False
        try:
            # never block: a reader that stopped reading must not stall the heartbeat (and the stop)
            self.sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            logger.debug("sd_notify to {!r}: its queue is full; message dropped", self.address)
            return False
        except OSError as e:
            logger.warning("sd_notify to {!r} failed: {}", self.address, e)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog_usec(self) -> int | None:
        """WatchdogSec as systemd passed it (for our own pings), when it is meant for us."""
        usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
        if not usec or (pid and int(pid) != os.getpid()):
            return None
        return int(usec)
