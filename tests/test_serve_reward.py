"""`rewardkit serve-reward` as a real process on a free 127.0.0.1 port, and the `remote` RM
against it: the same scores as in process, the contract, several servers, the token, limits."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

import numpy as np
import pytest
import torch

import rewardkit as rk
from rewardkit.cli import run as cli_run
from rewardkit.errors import RemoteRewardError
from rewardkit.serving.client import RewardClient
from rewardkit.testing import check_reward_model
from rewardkit.testing.reward_server import RewardServer
from rewardkit.world.rewards import WorldJudge

PROMPTS = ["one small red circle on a white background",
           "two big blue squares on a black background",
           "three small green triangles on a grey background",
           "a photo of a red circle"]
TOKEN = "token-for-tests-7f3a9c"


@pytest.fixture(scope="module")
def judge_server():
    with RewardServer("world-judge", args=["--max-batch", "8"]) as server:
        yield server


@pytest.fixture(scope="module")
def small_server():
    """The judge with tiny request limits (10 kB, 3 images), logging every request."""
    with RewardServer("world-judge", args=["--max-request-mb", "0.01", "--max-request-images",
                                           "3", "--access-log"]) as server:
        yield server


@pytest.fixture(scope="module")
def guarded_server():
    """``rule-judge`` behind a token, logging every request."""
    with RewardServer("rule-judge", token=TOKEN, args=["--access-log"]) as server:
        yield server


def world_images(count: int = 4, side: int = 32) -> torch.Tensor:
    """Drawings the judge gives varied scores: a coloured square on a plain background, noisy."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, side, side, generator=generator) * 0.2
    images[:, :, side // 4: 3 * side // 4, side // 4: 3 * side // 4] += torch.tensor(
        [0.8, 0.1, 0.1])[:, None, None]
    images[1:3] = images[1:3].flip(1)
    return images.clamp(0, 1)


def quantised(images: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy((images.numpy() * 255).round().astype(np.uint8).astype(np.float32)
                            / np.float32(255))


def post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("POST", path, body=body, headers=headers or {})
    response = connection.getresponse()
    status, data = response.status, json.loads(response.read())
    connection.close()
    return status, data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the same scores


def test_remote_scores_are_the_in_process_judges_exactly_in_float32(judge_server):
    images = world_images()
    remote = rk.reward_model("remote", url=judge_server.url)
    assert remote.served["name"] == "world-judge" and remote.logit_scale is None
    scores, terms = remote.call_with_terms(images, PROMPTS)
    expected, expected_terms = WorldJudge().call_with_terms(images, PROMPTS)
    assert torch.equal(scores, expected)  # exact: float32 pixels cross bit for bit
    assert len(set(expected.tolist())) > 1  # the images are judged differently
    assert terms.keys() == expected_terms.keys()
    for name in terms:
        assert torch.equal(terms[name], expected_terms[name])


@pytest.mark.parametrize("encoding", ["uint8", "png"])
def test_eight_bit_encodings_score_the_rounded_images_exactly(judge_server, encoding):
    images = world_images()
    remote = rk.reward_model("remote", url=judge_server.url, encoding=encoding)
    assert torch.equal(remote(images, PROMPTS), WorldJudge()(quantised(images), PROMPTS))


def test_the_remote_rm_meets_the_reward_model_contract(judge_server):
    check_reward_model(rk.reward_model("remote", url=judge_server.url), image_size=16, batch=3)


def test_several_servers_share_the_load_and_answer_in_order(judge_server, small_server,
                                                           guarded_server):
    remote = rk.reward_model("remote", url=f"{judge_server.url}, {small_server.url}",
                             max_batch=2, encoding="uint8")
    images, prompts = world_images(8, side=16), PROMPTS * 2
    before = small_server.output().count("POST /score")
    assert torch.equal(remote(images, prompts), WorldJudge()(quantised(images), prompts))
    assert small_server.output().count("POST /score") - before == 2  # 4 requests, alternating
    with pytest.raises(RemoteRewardError, match="do not serve one RM .*'world-judge'.*"
                                                "'rule-judge'"):
        rk.reward_model("remote", url=[judge_server.url, guarded_server.url], token=TOKEN)


# ---------------------------------------------------------------- the token


def test_a_wrong_or_missing_token_is_refused_and_never_logged(guarded_server, monkeypatch):
    server = guarded_server
    monkeypatch.delenv("REWARDKIT_REWARD_TOKEN", raising=False)
    for token in ("wrong-token-0123", None):
        with pytest.raises(RemoteRewardError, match=rf"reward server {server.url} refused "
                                                    r"the token \(401\)") as caught:
            rk.reward_model("remote", url=server.url, token=token)
        assert TOKEN not in str(caught.value) and "wrong-token" not in str(caught.value)
    monkeypatch.setenv("MY_REWARD_TOKEN", TOKEN)
    remote = rk.reward_model("remote", url=server.url, token_env="MY_REWARD_TOKEN")
    assert remote(world_images(2), PROMPTS[:2]).shape == (2,)
    assert TOKEN not in repr(remote) and TOKEN not in repr(remote.client)
    status, _ = post(server.url, "/score", b"RKS1", {"Authorization": "Bearer nope"})
    assert status == 401
    log = server.output()
    assert "missing or wrong token" in log and "POST /score" in log
    assert TOKEN not in log and "wrong-token" not in log and "nope" not in log


def test_listening_beyond_localhost_needs_a_token(capsys, monkeypatch):
    monkeypatch.delenv("REWARDKIT_REWARD_TOKEN", raising=False)
    assert cli_run(["serve-reward", "world-judge", "--host", "0.0.0.0"]) == 1
    message = " ".join(capsys.readouterr().err.split())
    assert "--host 0.0.0.0 listens beyond this machine" in message
    assert "$REWARDKIT_REWARD_TOKEN" in message


def test_a_taken_port_is_named(judge_server, capsys):
    assert cli_run(["serve-reward", "world-judge", "--port", str(judge_server.port)]) == 1
    assert f"--port {judge_server.port}: cannot listen there" in capsys.readouterr().err


# ---------------------------------------------------------------- limits and faults


def test_requests_over_the_limits_get_a_clear_413(small_server):
    from rewardkit.serving.protocol import encode_request

    server = small_server
    status, answer = post(server.url, "/score",
                          encode_request(torch.rand(2, 3, 32, 32), PROMPTS[:2]))
    assert status == 413 and "over the server's limit of 10485 bytes" in answer["error"]
    status, answer = post(server.url, "/score",
                          encode_request(torch.rand(4, 3, 2, 2), PROMPTS))
    assert status == 413 and "4 images, over the server's limit of 3" in answer["error"]
    remote = rk.reward_model("remote", url=server.url)
    with pytest.raises(RemoteRewardError, match=r"takes requests of at most 10485 bytes and "
                                                r"one \(3, 64, 64\) image is 49152 bytes"):
        remote(torch.rand(1, 3, 64, 64), PROMPTS[:1])
    noisy = rk.reward_model("remote", url=server.url, encoding="png", max_batch=3)
    with pytest.raises(RemoteRewardError, match=r"refused a request as too large \(413"):
        noisy(torch.rand(3, 3, 48, 48), PROMPTS[:3])
    # a body far larger than the socket buffers, refused from its Content-Length: the client
    # still gets the answer, not a broken connection
    with pytest.raises(RemoteRewardError, match=r"refused a request as too large \(413"):
        RewardClient([server.url], retries=0).request("POST", "/score", b"RKS1" + bytes(2**25))
    # within the limits the same server answers, 3 images at a time
    small = rk.reward_model("remote", url=server.url, encoding="uint8")
    images = world_images(4, side=16)
    assert torch.equal(small(images, PROMPTS), WorldJudge()(quantised(images), PROMPTS))


def test_a_server_that_is_not_running_is_named_in_one_sentence():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteRewardError) as caught:
        rk.reward_model("remote", url=url, retries=1, backoff=0.01)
    message = str(caught.value)
    assert message.startswith(f"reward server {url} did not answer (connection refused: is it "
                              "running?; 2 tries over")
    assert "rewardkit serve-reward" in message and "\n" not in message


def test_bad_reward_params_are_named():
    with pytest.raises(rk.errors.ConfigError, match="'ftp://x' is not an http"):
        rk.reward_model("remote", url="ftp://x")
    with pytest.raises(rk.errors.ConfigError, match="carries credentials"):
        rk.reward_model("remote", url="http://user:pw@127.0.0.1:1")
    with pytest.raises(rk.errors.ConfigError, match="encoding: 'jpeg' is not one of"):
        rk.reward_model("remote", url="http://127.0.0.1:1", encoding="jpeg")
