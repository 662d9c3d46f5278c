"""The HTTP face of ``rewardkit serve-reward``: a Starlette app run by uvicorn.

Why these two: they are the most used and best kept pair of Python's ASGI world (Starlette
under FastAPI, uvicorn its reference server), small (pure Python, a few hundred kB, no
compiled parts needed), and they already come with rewardkit's ``dev`` and ``demo`` extras
(gradio is built on them), so the plugins' venv has them too. An asyncio server holds many slow
clients on one thread while the RM runs on the batching worker; the standard library's
``http.server`` would need a thread per connection and its own request parsing, which Python's
documentation says is not meant for serving beyond a test. They are the ``serve`` extra
(``pip install rewardkit[serve]``), imported only when a server starts.

Request handling (:mod:`rewardkit.serving.protocol` has the format): the token is checked
before the body is read; a body over the limit is refused from its ``Content-Length`` or
while it streams in (413); decoding (PNG) runs on a thread; the batcher's future is awaited.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, RewardkitError
from .batcher import QueueFull
from .protocol import ProtocolError, TooManyImages, decode_request, encode_scores
from .service import RewardService

logger = logging.getLogger("rewardkit.serve")


def _error(status: int, message: str, **headers: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def build_app(service: RewardService) -> Any:
    """The Starlette app of ``service``: ``GET /health``, ``GET /describe``, ``POST /score``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    limits = service.limits
    unauthorised = ("missing or wrong token: send the header 'Authorization: Bearer <token>' "
                    "with the server's token")

    def refused(request: Request) -> Any:
        if service.authorised(request.headers.get("authorization")):
            return None
        client = request.client.host if request.client else "?"
        logger.warning("refused a %s %s from %s: missing or wrong token", request.method,
                       request.url.path, client)  # never the token itself
        return _error(401, unauthorised, **{"WWW-Authenticate": "Bearer"})

    async def health(request: Request) -> Any:
        return JSONResponse({"status": "ok"})

    async def describe(request: Request) -> Any:
        return refused(request) or JSONResponse(service.describe())

    async def score(request: Request) -> Any:
        denied = refused(request)
        if denied is not None:
            return denied
        too_large = (f"the request is over the server's limit of {limits.max_request_bytes} "
                     "bytes (--max-request-mb); send fewer images per request (the remote RM's "
                     "max_batch) or a smaller encoding (uint8, png)")
        try:
            declared = int(request.headers.get("content-length", "0"))
        except ValueError:
            return _error(400, "Content-Length is not a number")
        if declared > limits.max_request_bytes:
            return _error(413, too_large)
        body, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_request_bytes:
                    return _error(413, too_large)
                body.append(chunk)
        except ClientDisconnect:
            return _error(400, "the client went away before sending the whole request")
        try:
            decoded = await run_in_threadpool(decode_request, b"".join(body),
                                              limits.max_request_images)
        except TooManyImages as error:
            return _error(413, str(error))
        except ProtocolError as error:
            return _error(400, f"bad request: {error}")
        try:
            future = service.submit(decoded)
        except QueueFull as error:
            return _error(503, f"the server is busy: {error}; try again", **{"Retry-After": "1"})
        try:
            scores, terms = await asyncio.wrap_future(future)
        except QueueFull as error:
            return _error(503, f"the server is busy: {error}; try again", **{"Retry-After": "1"})
        except RewardkitError as error:
            return _error(422, str(error))
        except Exception as error:  # a bug of the served RM: said to the client, logged here
            logger.exception("reward model '%s' failed", service.name)
            return _error(500, f"reward model '{service.name}' failed: "
                               f"{type(error).__name__}: {error}")
        return JSONResponse(encode_scores(scores, terms))

    return Starlette(routes=[Route("/health", health, methods=["GET"]),
                             Route("/describe", describe, methods=["GET"]),
                             Route("/score", score, methods=["POST"])])


def is_local(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost`` or a loopback address)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    """``http://host:port`` (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one); ConfigError names a
    port that is taken or an address that cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY on accepted connections only when the listening
    # socket says IPPROTO_TCP; without it each kept-alive answer waits ~40 ms (Nagle against
    # the client's delayed acknowledgement)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        raise ConfigError(f"--host {host} --port {port}: cannot listen there ({reason}); choose "
                          "another --port (0 picks a free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(service: RewardService, host: str = "127.0.0.1", port: int = 8000, *,
          ready_file: str | Path | None = None, log_level: str = "warning",
          access_log: bool = False, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve ``service`` until interrupted (SIGINT/SIGTERM end it gracefully).

    Once it accepts requests, ``on_ready(url)`` is called and ``ready_file`` (if given) gets
    ``{"url": ...}`` (how a script or a test learns the port of ``--port 0``).
    """
    import uvicorn

    sock = bind(host, port)
    url = url_of(host, sock.getsockname()[1])

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.should_exit:
                return
            if ready_file is not None:
                path = Path(ready_file)
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(path.name + ".partial")
                partial.write_text(json.dumps({"url": url}))
                partial.replace(path)  # readers never see half a file
            if on_ready is not None:
                on_ready(url)

    config = uvicorn.Config(build_app(service), log_level=log_level, access_log=access_log,
                            lifespan="off", timeout_keep_alive=60, server_header=False)
    try:
        Server(config).run(sockets=[sock])
    finally:
        service.close()
        sock.close()
        sys.stdout.flush()


__all__ = ["bind", "build_app", "is_local", "serve", "url_of"]
