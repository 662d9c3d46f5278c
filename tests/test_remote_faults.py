"""The `remote` RM against servers that misbehave: too slow, answering garbage, NaN or the
wrong count, busy (503), dropping the connection. Each is a real HTTP server on a free
127.0.0.1 port (the standard library's, in a thread), speaking `/describe` properly and then
misbehaving on `/score`."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import rewardkit as rk
from rewardkit.errors import RemoteRewardError

DESCRIBE = {"protocol": 1, "name": "fake", "version": None, "differentiable": False,
            "input_space": "pixels", "logit_scale": None, "max_batch": 8,
            "max_request_bytes": 2**20, "max_request_images": 64}


class FakeServer:
    """Answers ``/score`` with ``behave(count, calls) -> (status, body bytes, delay_s)``;
    ``None`` closes the connection without an answer."""

    def __init__(self, behave) -> None:
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self.answer(200, json.dumps(DESCRIBE).encode())

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                header = json.loads(body[8:8 + int.from_bytes(body[4:8], "little")])
                outer.calls += 1
                result = behave(len(header["prompts"]), outer.calls)
                if result is None:
                    self.close_connection = True
                    return
                status, answer, delay = result
                time.sleep(delay)
                try:
                    self.answer(status, answer)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> "FakeServer":
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def scores(count: int, value: str = "0.5") -> bytes:
    return ('{"scores": [' + ", ".join([value] * count) + "]}").encode()


IMAGES, PROMPTS = torch.rand(2, 3, 8, 8), ["a red circle", "a blue square"]
FAST = dict(retries=2, backoff=0.01)


def remote(server: FakeServer, **params):
    return rk.reward_model("remote", url=server.url, **{**FAST, **params})


def test_slow_beyond_the_timeout_is_retried_then_named():
    with FakeServer(lambda count, calls: (200, scores(count), 1.0)) as server:
        rm = remote(server, timeout=0.2, retries=1)
        started = time.monotonic()
        with pytest.raises(RemoteRewardError) as caught:
            rm(IMAGES, PROMPTS)
        assert time.monotonic() - started < 1.5
        assert str(caught.value).startswith(f"reward server {server.url} did not answer (no "
                                            "answer within 0.2 s; 2 tries over")
        assert server.calls == 2


def test_a_slow_answer_within_the_timeout_is_used():
    with FakeServer(lambda count, calls: (200, scores(count, "0.25"), 0.2)) as server:
        assert remote(server, timeout=5)(IMAGES, PROMPTS).tolist() == [0.25, 0.25]


UNUSABLE = r"an unusable score answer \("


@pytest.mark.parametrize("answer,match", [
    (b"<html>hello</html>", r"something that is not JSON \('<html>hello</html>'\); "
                            "is it a rewardkit serve-reward server"),
    (b'{"result": 1}', UNUSABLE + r"the answer has no 'scores'\)"),
    (b'{"scores": [NaN, 0.5]}', UNUSABLE + r"1 of the 2 scores are not finite \(NaN or inf\)"),
    (b'{"scores": [0.5]}', UNUSABLE + r"scores: expected 2 values, got 1 values\)"),
    (b'{"scores": ["a", "b"]}', UNUSABLE + r"scores: not all values are numbers\)"),
])
def test_garbage_nan_or_a_wrong_count_is_named_and_not_retried(answer, match):
    with FakeServer(lambda count, calls: (200, answer, 0)) as server:
        with pytest.raises(RemoteRewardError,
                           match=rf"reward server {server.url} answered {match}"):
            remote(server)(IMAGES, PROMPTS)
        assert server.calls == 1


def test_the_rms_own_refusal_is_passed_on_without_retrying():
    refusal = json.dumps({"error": "reward model 'x' expects RGB images"}).encode()
    with FakeServer(lambda count, calls: (422, refusal, 0)) as server:
        with pytest.raises(RemoteRewardError, match="answered 422: reward model 'x' expects RGB"):
            remote(server)(IMAGES, PROMPTS)
        assert server.calls == 1


def test_a_busy_server_or_a_dropped_connection_is_retried():
    busy = json.dumps({"error": "the server is busy"}).encode()

    def behave(count, calls):
        if calls == 1:
            return 503, busy, 0
        if calls == 2:
            return None  # the connection closes without an answer
        return 200, scores(count, "0.75"), 0

    with FakeServer(behave) as server:
        assert remote(server)(IMAGES, PROMPTS).tolist() == [0.75, 0.75]
        assert server.calls == 3
