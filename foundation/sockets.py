"""The listening socket that a pod's serving processes all bind: one port, SO_REUSEPORT."""

from __future__ import annotations

import socket

__all__ = ["reuse_port_socket"]


def reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Every serving process binds the port itself: the kernel spreads new connections
    # evenly over their accept queues.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock
