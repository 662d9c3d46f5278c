"""The parts of `rewardkit serve-reward` without a socket: the wire format, the batching
worker, the service (describe, token), and keeping secrets out of what rewardkit writes."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from rewardkit.rewards.rule_judge import RuleJudge
from rewardkit.secrets import REDACTED, redact, redact_command
from rewardkit.serving.batcher import Batcher, QueueFull
from rewardkit.serving.protocol import (ProtocolError, TooManyImages, decode_request,
                                        decode_scores, encode_request, encode_scores)
from rewardkit.serving.service import RewardService, ServerLimits
from rewardkit.world.rewards import WorldJudge

PROMPTS = ["one small red circle on a white background", "two big blue squares on a black "
           "background", "a green triangle"]


# ---------------------------------------------------------------- the wire format


def test_float32_images_cross_the_wire_bit_exact():
    images = torch.rand(3, 3, 9, 7)
    decoded = decode_request(encode_request(images, PROMPTS, "float32", {"task": "t"}))
    assert torch.equal(decoded.images, images)
    assert decoded.prompts == PROMPTS and decoded.metadata == {"task": "t"}


@pytest.mark.parametrize("encoding", ["uint8", "png"])
def test_eight_bit_encodings_give_the_rounded_pixels(encoding):
    images = torch.rand(3, 3, 8, 8)
    decoded = decode_request(encode_request(images, PROMPTS, encoding))
    expected = torch.from_numpy(
        (images.numpy() * 255).round().astype(np.uint8).astype(np.float32) / np.float32(255))
    assert torch.equal(decoded.images, expected)


@pytest.mark.parametrize("body,match", [
    (b"hello", "does not start with RKS1"),
    (b"RKS1\xff\x00\x00\x00{}", "header length"),
    (b"RKS1\x02\x00\x00\x00[]", "JSON object"),
])
def test_malformed_bodies_are_named(body, match):
    with pytest.raises(ProtocolError, match=match):
        decode_request(body)


def test_a_payload_that_does_not_fit_its_shape_is_named():
    body = bytearray(encode_request(torch.rand(2, 3, 4, 4), PROMPTS[:2], "float32"))
    with pytest.raises(ProtocolError, match="take 384 bytes, the payload has 380"):
        decode_request(bytes(body[:-4]))
    with pytest.raises(ProtocolError, match="2 images but 3 prompts"):
        header = json.dumps({"prompts": PROMPTS, "images": {"encoding": "uint8",
                                                            "shape": [2, 3, 1, 1]}}).encode()
        decode_request(b"RKS1" + len(header).to_bytes(4, "little") + header + bytes(6))
    with pytest.raises(TooManyImages, match="3 images, over the server's limit of 2"):
        decode_request(encode_request(torch.rand(3, 3, 2, 2), PROMPTS), max_images=2)


def test_score_answers_round_trip_and_bad_ones_are_named():
    scores, terms = torch.tensor([0.25, 1 / 3]), {"t": torch.tensor([1.0, float("nan")])}
    answer = json.loads(json.dumps(encode_scores(scores, terms)))
    got, got_terms = decode_scores(answer, 2)
    assert torch.equal(torch.as_tensor(got, dtype=torch.float32), scores)  # exact
    assert got_terms["t"][0] == 1.0 and np.isnan(got_terms["t"][1])
    with pytest.raises(ProtocolError, match="expected 3 values, got 2"):
        decode_scores(answer, 3)
    with pytest.raises(ProtocolError, match="1 of the 2 scores are not finite"):
        decode_scores(json.loads('{"scores": [NaN, 1.0]}'), 2)
    with pytest.raises(ProtocolError, match="no 'scores'"):
        decode_scores(["hello"], 2)


# ---------------------------------------------------------------- the batching worker


def test_concurrent_requests_share_calls_and_get_their_own_scores():
    calls = []

    def score(images, prompts, metadata):
        calls.append(images.shape[0])
        time.sleep(0.01)
        return images.mean((1, 2, 3)), {"first": images[:, 0, 0, 0]}

    batcher = Batcher(score, max_batch=8, max_queue=64, wait_s=0.05)
    requests = [torch.rand(n, 3, 4, 4) for n in (1, 2, 3, 2, 5)]
    results: list = [None] * len(requests)

    def client(i: int) -> None:
        results[i] = batcher.submit(requests[i], ["p"] * len(requests[i])).result(10)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    for images, (scores, terms) in zip(requests, results):
        assert torch.equal(scores, images.mean((1, 2, 3)))
        assert torch.equal(terms["first"], images[:, 0, 0, 0])
    assert sum(calls) == 13 and max(calls) <= 8 and len(calls) < len(requests)


def test_a_large_request_is_split_into_calls_of_max_batch():
    calls = []

    def score(images, prompts, metadata):
        calls.append(list(prompts))
        return torch.tensor([float(p) for p in prompts]), {}

    batcher = Batcher(score, max_batch=4, max_queue=64, wait_s=0)
    prompts = [str(i) for i in range(10)]
    scores, _ = batcher.submit(torch.zeros(10, 3, 2, 2), prompts).result(10)
    batcher.close()
    assert scores.tolist() == list(range(10)) and [len(c) for c in calls] == [4, 4, 2]


def test_a_full_queue_refuses_at_once_and_errors_reach_every_client():
    release = threading.Event()

    def score(images, prompts, metadata):
        release.wait(10)
        if prompts[0] == "fail":
            raise ValueError("broken RM")
        return torch.zeros(images.shape[0]), {}

    batcher = Batcher(score, max_batch=2, max_queue=4, wait_s=0)
    first = batcher.submit(torch.zeros(2, 3, 2, 2), ["a", "b"])  # taken by the worker
    time.sleep(0.1)
    queued = batcher.submit(torch.zeros(4, 3, 2, 2), ["fail"] * 4)
    with pytest.raises(QueueFull, match="4 images are waiting and the queue holds 4"):
        batcher.submit(torch.zeros(1, 3, 2, 2), ["c"])
    release.set()
    assert first.result(10)[0].shape == (2,)
    with pytest.raises(ValueError, match="broken RM"):
        queued.result(10)
    batcher.close()


# ---------------------------------------------------------------- the service


def test_describe_says_what_is_served_and_the_token_is_checked_in_constant_time():
    service = RewardService(RuleJudge(), "rule-judge", {"tolerance": 0.3, "token": "s3cret"},
                            "1.2.3", ServerLimits(max_batch=4), token="s3cret")
    described = service.describe()
    service.close()
    assert described["name"] == "rule-judge" and described["version"] == "1.2.3"
    assert described["differentiable"] is False and described["input_space"] == "pixels"
    assert described["max_batch"] == 4 and described["authentication"] is True
    assert described["params"] == {"tolerance": 0.3, "token": REDACTED}
    assert "s3cret" not in json.dumps(described) and "s3cret" not in repr(service)
    assert service.authorised("Bearer s3cret") and service.authorised("bearer s3cret")
    assert not any(service.authorised(h) for h in (None, "", "Bearer wrong", "s3cret",
                                                   "Basic s3cret"))


def test_the_service_scores_with_the_rms_terms():
    service = RewardService(WorldJudge(), "world-judge")
    images = torch.rand(3, 3, 16, 16)
    from rewardkit.serving.protocol import ScoreRequest

    scores, terms = service.submit(ScoreRequest(images, PROMPTS)).result(10)
    service.close()
    expected, expected_terms = WorldJudge().call_with_terms(images, PROMPTS)
    assert torch.equal(scores, expected)
    assert terms.keys() == expected_terms.keys() == {"background", "colour", "count", "shape",
                                                     "size", "crispness"}
    for name in terms:
        assert torch.equal(terms[name], expected_terms[name])


# ---------------------------------------------------------------- secrets


def test_secrets_are_redacted_from_configs_and_commands():
    config = {"reward": "remote", "reward_params": {"url": "http://h:1", "token": "abc",
                                                   "token_env": "MY_VAR"},
              "gold_panel_params": {"remote": {"Token": "def"}}, "seed": 3}
    assert redact(config) == {"reward": "remote", "seed": 3,
                              "reward_params": {"url": "http://h:1", "token": REDACTED,
                                                "token_env": "MY_VAR"},
                              "gold_panel_params": {"remote": {"Token": REDACTED}}}
    command = redact_command(["run", "rg-lcd", "--reward_params",
                              '{"url": "http://h:1", "token": "abc"}', "--metric-param",
                              "remote.token=def", "--token", "ghi", "--url",
                              "http://user:jkl@h:1/?token=mno"])
    assert not any(secret in " ".join(command) for secret in ("abc", "def", "ghi", "jkl", "mno"))
    assert command[3] == '{"url": "http://h:1", "token": "<redacted>"}'
