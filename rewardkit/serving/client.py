"""The client of ``rewardkit serve-reward`` servers: timeouts, bounded retries with back-off,
several servers sharing the load, and answers checked before they are used.

Standard library only (``http.client``, one kept-alive connection per thread and server), so
the training process needs nothing beyond rewardkit's own dependencies.

What is retried (with back-off ``backoff * 2**k``, at most ``max_backoff`` seconds, +-20%
jitter from a private generator, so the training's random streams are untouched): a refused or
dropped connection, no answer within ``timeout`` seconds, and 502/503/504 answers (a busy or
restarting server; its ``Retry-After`` is honoured). Each retry goes to the next server. What
is not retried, because asking again gets the same answer: a wrong token (401), a request too
large (413), a malformed request (400), the RM refusing the images (422) or failing (500), and
an answer that is not a score answer (garbage, a wrong count, NaN). Every failure is a
:class:`rewardkit.errors.RemoteRewardError` naming the server; the token is never in it.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, RemoteRewardError
from ..secrets import TOKEN_ENV
from .protocol import (CONTENT_TYPE, PROTOCOL_VERSION, ProtocolError, decode_scores,
                       encode_request)

#: Answers worth asking again (the server is busy, restarting, or behind a proxy that is).
RETRY_STATUSES = (502, 503, 504)


def parse_urls(url: str | Sequence[str]) -> list[str]:
    """``url`` (one, a list, or several separated by commas or spaces) as ``http(s)://host:port``
    base URLs without a trailing slash; ConfigError names a malformed one."""
    items = url.replace(",", " ").split() if isinstance(url, str) else list(url)
    if not items:
        raise ConfigError("reward_params url: give the reward server's URL, e.g. "
                          "'http://127.0.0.1:8765' (rewardkit serve-reward prints it)")
    out = []
    for item in items:
        parts = urllib.parse.urlsplit(str(item).strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"reward_params url: '{item}' is not an http:// or https:// URL "
                              "like 'http://127.0.0.1:8765'")
        if parts.username or parts.password or parts.query:
            raise ConfigError(f"reward_params url: '{parts.scheme}://{parts.hostname}...' "
                              "carries credentials or a query; give the token as reward_params "
                              f"token or in ${TOKEN_ENV} instead")
        out.append(f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}")
    return out


def _reason(error: BaseException, timeout: float) -> str:
    """A few words for a failed exchange (never the request's headers)."""
    if isinstance(error, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: is it running?"
    if isinstance(error, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "the connection was closed without an answer"
    if isinstance(error, socket.gaierror):
        return f"its host name does not resolve ({error.strerror})"
    return f"{type(error).__name__}: {error}"


class RewardClient:
    """Talks to one or more reward servers (``urls``); thread-safe.

    ``token``: sent as ``Authorization: Bearer``; ``timeout``: seconds to connect and to wait
    for each answer; ``retries``: further tries after a failure worth retrying; ``backoff``:
    the first wait between tries (doubling).
    """

    def __init__(self, urls: Sequence[str], token: str | None = None, timeout: float = 120.0,
                 retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ConfigError("reward_params: timeout must be positive, retries and backoff "
                              f"not negative (got timeout={timeout}, retries={retries}, "
                              f"backoff={backoff})")
        self.urls = list(urls)
        self._token = token
        self.timeout, self.retries = timeout, retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self._local = threading.local()
        self._jitter = random.Random()  # private: never the training's streams
        self._turn = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:  # the token stays out of any log
        return f"RewardClient(urls={self.urls}, timeout={self.timeout}, retries={self.retries})"

    # ------------------------------------------------------------ one exchange

    def _connection(self, url: str) -> http.client.HTTPConnection:
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        if url not in connections:
            parts = urllib.parse.urlsplit(url)
            kind = _HTTPSConnection if parts.scheme == "https" else _HTTPConnection
            connections[url] = kind(parts.hostname, parts.port, timeout=self.timeout)
        return connections[url]

    def _drop(self, url: str) -> None:
        connection = getattr(self._local, "connections", {}).pop(url, None)
        if connection is not None:
            connection.close()

    def _exchange(self, url: str, method: str, path: str,
                  body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        prefix = urllib.parse.urlsplit(url).path
        connection = self._connection(url)
        try:
            connection.request(method, prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except BaseException:
            self._drop(url)
            raise
        if response.getheader("connection", "").lower() == "close":
            self._drop(url)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def request(self, method: str, path: str, body: bytes | None = None,
                first: int = 0) -> tuple[str, Any]:
        """``(url, parsed JSON)`` of a 200 answer to ``method path``, from server ``first``
        (then the next ones on retries); RemoteRewardError for anything else."""
        tried: list[str] = []
        reason, started = "", time.monotonic()
        for attempt in range(self.retries + 1):
            url = self.urls[(first + attempt) % len(self.urls)]
            tried.append(url)
            wait = self.backoff * 2 ** attempt
            try:
                status, headers, data = self._exchange(url, method, path, body)
            except (OSError, http.client.HTTPException) as error:
                reason = _reason(error, self.timeout)
            else:
                if status == 200:
                    try:
                        return url, json.loads(data)
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        raise RemoteRewardError(url, "answered something that is not JSON "
                                                f"({_preview(data)})", _NOT_A_SERVER) from None
                message = _message(data)
                if status not in RETRY_STATUSES:
                    raise _refusal(url, status, message)
                reason = f"answered {status}: {message}"
                try:
                    wait = max(wait, float(headers.get("retry-after", 0)))
                except ValueError:
                    pass
            if attempt < self.retries:
                time.sleep(min(wait, self.max_backoff) * self._jitter.uniform(0.8, 1.2))
        elapsed = time.monotonic() - started
        tries = f"{len(tried)} tr{'y' if len(tried) == 1 else 'ies'}"
        raise RemoteRewardError(list(dict.fromkeys(tried)),
                                f"did not answer ({reason}; {tries} over {elapsed:.1f} s)",
                                "start it (rewardkit serve-reward NAME --port PORT) or check "
                                "reward_params url; reward_params timeout and retries say how "
                                "long to wait")

    # ------------------------------------------------------------ the endpoints

    def describe(self) -> dict[str, Any]:
        """``/describe`` of every server; RemoteRewardError when one speaks another protocol
        or they serve different RMs. Returns the first server's answer."""
        answers = []
        for index, url in enumerate(self.urls):
            _, answer = self.request("GET", "/describe", first=index)
            if not isinstance(answer, dict) or "name" not in answer:
                raise RemoteRewardError(url, "answered /describe without the RM's name",
                                        _NOT_A_SERVER)
            if answer.get("protocol") != PROTOCOL_VERSION:
                raise RemoteRewardError(url, f"speaks protocol {answer.get('protocol')}, this "
                                        f"rewardkit speaks {PROTOCOL_VERSION}",
                                        "run the same rewardkit version on both sides")
            answers.append(answer)
        names = {a["name"] for a in answers}
        if len(names) > 1:
            served = ", ".join(f"{u} serves '{a['name']}'" for u, a in zip(self.urls, answers))
            raise RemoteRewardError(self.urls, f"do not serve one RM ({served})",
                                    "give the URLs of one RM's servers only")
        return answers[0]

    def score(self, images: torch.Tensor, prompts: Sequence[str], *, encoding: str = "float32",
              metadata: Any = None, chunk: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scores ``[B]`` and terms of ``images`` in requests of at most ``chunk`` images,
        spread over the servers (in parallel when there are several)."""
        count = images.shape[0]
        starts = list(range(0, count, max(1, chunk)))
        with self._lock:
            turn, self._turn = self._turn, self._turn + max(1, len(starts))

        def one(index: int, start: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            end = min(start + chunk, count)
            meta = metadata[start:end] if isinstance(metadata, list) else metadata
            body = encode_request(images[start:end], prompts[start:end], encoding, meta)
            url, answer = self.request("POST", "/score", body, first=turn + index)
            try:
                return decode_scores(answer, end - start)
            except ProtocolError as error:
                raise RemoteRewardError(url, f"answered an unusable score answer ({error})",
                                        _NOT_A_SERVER if "no 'scores'" in str(error) else
                                        "check the served RM") from None

        if len(self.urls) > 1 and len(starts) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(len(self.urls), thread_name_prefix="reward-client")
            parts = list(self._pool.map(one, range(len(starts)), starts))
        else:
            parts = [one(i, s) for i, s in enumerate(starts)]
        if not parts:
            return np.zeros(0), {}
        scores = np.concatenate([p[0] for p in parts])
        names = set(parts[0][1]).intersection(*(p[1] for p in parts[1:]))
        terms = {n: np.concatenate([p[1][n] for p in parts]) for n in parts[0][1] if n in names}
        return scores, terms

    def close(self) -> None:
        """Close this thread's connections and the worker pool."""
        for url in list(getattr(self._local, "connections", {})):
            self._drop(url)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class _HTTPConnection(http.client.HTTPConnection):
    """With ``TCP_NODELAY``: ``http.client`` sends a request's headers and body in two
    writes, and Nagle's algorithm would hold the body back until the server's delayed
    acknowledgement (about 40 ms per request)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _HTTPSConnection(http.client.HTTPSConnection):
    """:class:`_HTTPConnection` over TLS."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_NOT_A_SERVER = "is it a rewardkit serve-reward server? (GET /describe says)"


def _preview(data: bytes) -> str:
    text = data[:60].decode("utf-8", "replace").replace("\n", " ")
    return repr(text + ("..." if len(data) > 60 else ""))


def _message(data: bytes) -> str:
    """The ``error`` sentence of an answer, or a preview of whatever it is."""
    try:
        answer = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _preview(data)
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return answer["error"]
    return _preview(data)


def _refusal(url: str, status: int, message: str) -> RemoteRewardError:
    """The error of an answer not worth retrying."""
    if status == 401:
        return RemoteRewardError(url, "refused the token (401)",
                                 "give the server's token as reward_params token, or in the "
                                 f"variable reward_params token_env names (default ${TOKEN_ENV})")
    if status == 413:
        return RemoteRewardError(url, f"refused a request as too large (413: {message})",
                                 "lower reward_params max_batch, use encoding uint8 or png, or "
                                 "raise the server's --max-request-mb")
    if status == 404:
        return RemoteRewardError(url, "has no such endpoint (404)", _NOT_A_SERVER)
    return RemoteRewardError(url, f"answered {status}: {message}")


__all__ = ["RETRY_STATUSES", "RewardClient", "parse_urls"]
