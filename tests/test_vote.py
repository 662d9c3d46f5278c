"""``rewardkit vote`` without a browser: the votes file, the session's scheduling, sides and
recording, the study's images (the world's teacher and a student, through eval's sampling)."""

from __future__ import annotations

import json
import multiprocessing
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from rewardkit.errors import ConfigError
from rewardkit.vote.log import FIELDS, VoteLog, parse_lines, winner_of
from rewardkit.vote.session import VotingSession, clean_rater, parse_criteria
from rewardkit.vote.study import Arm, Study, detect_kind, make_arms

PROMPTS = ["a red circle", "a blue square", "a green circle", "a red square", "a blue circle"]


def fake_study(folder: Path, prompts=PROMPTS, images_per_prompt: int = 1, side: int = 8) -> Study:
    """A study whose images are written directly: arm a's pixels are 10 * pair + 1, arm b's
    10 * pair + 2 (so a test can tell which image is which), with a PNG text chunk naming the
    model (which the page must not pass on)."""
    arms = (Arm("student", "/models/student", "student", 2), Arm("teacher", "/models/teacher",
                                                                  "teacher", 50))
    study = Study(arms, list(prompts), ["shapes" if "circle" in p else "squares" for p in prompts],
                  folder, images_per_prompt=images_per_prompt, seed=100)
    for i in range(study.num_pairs):
        for n, arm in enumerate("ab", 1):
            path = study.image(arm, i)
            path.parent.mkdir(parents=True, exist_ok=True)
            info = PngImagePlugin.PngInfo()
            info.add_text("model", arms[n - 1].label)
            Image.fromarray(np.full((side, side, 3), (10 * i + n) % 256, np.uint8)).save(path, pnginfo=info)
    study.save()
    return study


def vote_line(**overrides) -> dict:
    vote = {"study": "s1", "pair": 0, "prompt": "p", "category": "", "seed": 0, "model_a": "A",
            "model_b": "B", "left": "a", "criterion": "overall", "choice": "left", "winner": "a",
            "rater": "r", "time": "2025-01-01T00:00:00Z", "image_a": "a.png", "image_b": "b.png"}
    vote.update(overrides)
    return vote


# ---------------------------------------------------------------- the votes file


def test_votes_are_appended_and_read_back(tmp_path):
    log = VoteLog(tmp_path / "sub" / "votes.jsonl")
    assert log.read().votes == []
    log.append([vote_line(pair=0), vote_line(pair=1, choice="tie", winner="tie")])
    log.append([vote_line(pair=2, left="b", choice="left", winner="b")])
    votes = log.read().votes
    assert [v["pair"] for v in votes] == [0, 1, 2] and votes[2]["winner"] == "b"
    assert set(votes[0]) == set(FIELDS)
    with pytest.raises(ValueError, match="contradicts"):
        log.append([vote_line(left="b", choice="left", winner="a")])
    assert len(log.read().votes) == 3  # nothing of a refused batch is written


def test_winner_follows_the_side():
    assert [winner_of(c, "a") for c in ("left", "right", "tie", "skip")] == ["a", "b", "tie", "skip"]
    assert [winner_of(c, "b") for c in ("left", "right")] == ["b", "a"]


def test_a_corrupt_line_never_loses_other_votes(tmp_path):
    path = tmp_path / "votes.jsonl"
    good = [json.dumps(vote_line(pair=i)) for i in range(4)]
    path.write_text("\n".join([good[0], "{not json", good[1], json.dumps({"pair": 3}),
                               json.dumps(vote_line(choice="maybe")), good[2]]) + "\n"
                    + good[3][:20])  # the last line cut short by a crash
    read = VoteLog(path).read()
    assert [v["pair"] for v in read.votes] == [0, 1, 2]
    assert [n for n, _ in read.bad_lines] == [2, 4, 5, 7]
    assert "not JSON" in read.bad_lines[0][1] and "no study" in read.bad_lines[1][1]
    warning = read.warning(path)
    assert str(path) in warning and "4 line(s)" in warning and "other 3 votes are kept" in warning
    VoteLog(path).append([vote_line(pair=9)])  # after a cut-short line: a line of its own
    again = VoteLog(path).read()
    assert [v["pair"] for v in again.votes] == [0, 1, 2, 9] and len(again.bad_lines) == 4


def test_an_unusable_votes_path_is_named(tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(ConfigError, match=f"votes file {folder} is a folder"):
        VoteLog(folder).append([vote_line()])
    with pytest.raises(ConfigError, match=f"votes file {folder} cannot be read"):
        VoteLog(folder).read()
    assert parse_lines(b"\xff\xfe\n").bad_lines == [(1, "not JSON")]


def _append_many(path: str, rater: str, count: int) -> None:
    log = VoteLog(path)
    for i in range(count):
        log.append([vote_line(pair=i, rater=rater, prompt="x" * 2000),
                    vote_line(pair=i, rater=rater, criterion="quality", prompt="y" * 2000)])


def test_several_processes_share_one_file_without_losing_or_mixing_lines(tmp_path):
    path = tmp_path / "votes.jsonl"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(path), f"r{n}", 40))
               for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    read = VoteLog(path).read()
    assert read.bad_lines == [] and len(read.votes) == 4 * 40 * 2
    for n in range(4):  # each submission's two lines stay together
        mine = [v for v in read.votes if v["rater"] == f"r{n}"]
        assert [v["pair"] for v in mine] == [i for i in range(40) for _ in range(2)]


# ---------------------------------------------------------------- the session


def test_a_rater_sees_every_pair_once_and_a_restart_continues(tmp_path):
    study = fake_study(tmp_path / "images", images_per_prompt=2)
    log = VoteLog(tmp_path / "votes.jsonl")
    session = VotingSession(study, log, rng=random.Random(0))
    seen = []
    for _ in range(4):
        shown = session.next_pair("alice")
        seen.append(shown.pair.index)
        session.record(shown, {"overall": "left"})
    skipped = session.next_pair("alice")
    session.record(skipped, None)  # a skip counts as seen
    seen.append(skipped.pair.index)
    # the server is killed and started again on the same files
    restarted = VotingSession(study, log, rng=random.Random(1))
    assert restarted.progress("alice") == (5, 10)
    while (shown := restarted.next_pair(" alice ")) is not None:
        seen.append(shown.pair.index)
        restarted.record(shown, {"overall": "tie"})
    assert sorted(seen) == list(range(10))
    votes = log.read().votes
    assert len(votes) == 10 and sorted(v["pair"] for v in votes) == list(range(10))
    assert [v["choice"] for v in votes].count("skip") == 1
    assert restarted.next_pair("bob") is not None  # another rater starts afresh


def test_pairs_with_fewest_votes_come_first_across_raters(tmp_path):
    study = fake_study(tmp_path / "images", images_per_prompt=2)
    session = VotingSession(study, VoteLog(tmp_path / "votes.jsonl"), rng=random.Random(3))
    pairs = []
    for rater in ["r1", "r2", "r3", "r4", "r5"] * 2:  # ten votes by five raters: each pair once
        shown = session.next_pair(rater)
        pairs.append(shown.pair.index)
        session.record(shown, {"overall": "right"})
    assert sorted(pairs) == list(range(10))


def test_sides_are_random_and_the_choice_names_the_model_shown_there(tmp_path):
    study = fake_study(tmp_path / "images", prompts=[f"prompt {i}" for i in range(200)])
    log = VoteLog(tmp_path / "votes.jsonl")
    session = VotingSession(study, log, rng=random.Random(7))
    lefts = []
    for _ in range(200):
        shown = session.next_pair("alice")
        left, right = session.images(shown)
        index = shown.pair.index
        # the left image is the model the session says is left (pixels 10i+1 for a, 10i+2 for b)
        assert np.asarray(left)[0, 0, 0] == (10 * index + (1 if shown.left == "a" else 2)) % 256
        assert np.asarray(right)[0, 0, 0] == (10 * index + (2 if shown.left == "a" else 1)) % 256
        lefts.append(shown.left)
        session.record(shown, {"overall": "left"})
    assert 80 <= lefts.count("a") <= 120  # a fair coin: 200 draws, 4.5 sd either side
    votes = log.read().votes
    assert all(v["winner"] == v["left"] for v in votes)  # "left" chose the model shown left
    assert votes[0]["model_a"] == "student (2 steps)" and votes[0]["model_b"] == "teacher (50 steps)"
    assert votes[0]["image_a"] == f"images/images/student/steps-2/{votes[0]['pair']:05d}.png"


def test_the_shown_images_carry_nothing_of_their_files(tmp_path):
    study = fake_study(tmp_path / "images", side=32)
    session = VotingSession(study, VoteLog(tmp_path / "votes.jsonl"))
    with Image.open(study.image("a", 0)) as original:
        assert original.info["model"] == "student"
    shown = session.next_pair("alice")
    left, right = session.images(shown)
    assert left.size == right.size == (256, 256) and left.mode == right.mode == "RGB"
    assert left.info == {} and right.info == {}
    assert getattr(left, "filename", "") == "" and getattr(right, "filename", "") == ""


def test_two_tabs_of_one_rater_cannot_vote_twice_on_a_pair(tmp_path):
    study = fake_study(tmp_path / "images")
    log = VoteLog(tmp_path / "votes.jsonl")
    first = VotingSession(study, log, rng=random.Random(0))
    second = VotingSession(study, log, rng=random.Random(0))  # another server, same file
    shown_here, shown_there = first.next_pair("alice"), second.next_pair("alice")
    assert shown_here.pair.index == shown_there.pair.index
    assert len(first.record(shown_here, {"overall": "left"})) == 1
    assert second.record(shown_there, {"overall": "right"}) == []
    assert len(log.read().votes) == 1
    # in one server, a pair on screen in one tab is not shown in another meanwhile...
    a, b = first.next_pair("bob"), first.next_pair("bob")
    assert a.pair.index != b.pair.index
    first.record(b, {"overall": "left"})
    for _ in range(3):  # bob answers every other pair in his second tab
        shown = first.next_pair("bob")
        assert shown.pair.index != a.pair.index
        first.record(shown, {"overall": "left"})
    # ...but once the rest are done it comes back (the first tab may have been closed)
    again = first.next_pair("bob")
    assert again.pair.index == a.pair.index
    assert len(first.record(again, {"overall": "tie"})) == 1
    assert first.record(a, {"overall": "left"}) == []  # the old tab cannot answer it again
    assert first.next_pair("bob") is None


def test_criteria_make_one_line_each_and_every_one_must_be_answered(tmp_path):
    study = fake_study(tmp_path / "images")
    log = VoteLog(tmp_path / "votes.jsonl")
    session = VotingSession(study, log, criteria=["overall", "alignment", "quality"])
    shown = session.next_pair("alice")
    with pytest.raises(ConfigError, match="matches the prompt better"):
        session.record(shown, {"overall": "left", "quality": "tie"})
    written = session.record(shown, {"overall": "left", "alignment": "right", "quality": "tie"})
    assert [(v["criterion"], v["choice"]) for v in written] == [
        ("overall", "left"), ("alignment", "right"), ("quality", "tie")]
    assert len({v["time"] for v in written}) == 1 and log.read().votes == written
    assert parse_criteria("quality, overall") == ["quality", "overall"]
    with pytest.raises(ConfigError, match="'beauty' is not one of overall, alignment, quality"):
        parse_criteria("overall,beauty")
    with pytest.raises(ConfigError, match="type a rater id"):
        clean_rater("   ")
    assert clean_rater("  Ada \n Lovelace ") == "Ada Lovelace"


def test_a_votes_file_of_another_study_is_refused(tmp_path):
    study = fake_study(tmp_path / "images")
    log = VoteLog(tmp_path / "votes.jsonl")
    log.append([vote_line(study="0123456789ab")])
    with pytest.raises(ConfigError, match=r"votes\.jsonl holds votes of another study "
                                          r"\(0123456789ab; this one is "):
        VotingSession(study, log)


# ---------------------------------------------------------------- the study


def test_a_folder_of_another_study_is_refused(tmp_path):
    fake_study(tmp_path / "images")
    other = Study(fake_study(tmp_path / "x").arms, ["another prompt"], [""], tmp_path / "images")
    with pytest.raises(ConfigError, match=r"holds the images of another study .* pass another "
                                          "--images folder or delete it"):
        other.save()


def test_servers_that_mount_the_models_elsewhere_share_the_study(tmp_path):
    study = fake_study(tmp_path / "images")
    moved = Study(tuple(Arm(arm.label, "/mnt" + arm.location, arm.kind, arm.steps)
                        for arm in study.arms), study.prompts, study.categories,
                  tmp_path / "images", seed=study.seed)
    assert moved.id == study.id
    note = moved.save()
    assert "were sampled from /models/student, /models/teacher; kept for /mnt/models/student" in note
    assert Study.load(tmp_path / "images").arms[0].location == "/models/student"


def test_arms_are_labelled_and_their_kinds_read_from_the_pipelines(tmp_path):
    from rewardkit.world.assets import TEACHER, asset_path

    teacher = str(asset_path(TEACHER))
    assert detect_kind(teacher) == "teacher"
    student = tmp_path / "run" / "pipeline" / "scheduler"
    student.mkdir(parents=True)
    (student / "scheduler_config.json").write_text(json.dumps({"_class_name": "LCMScheduler"}))
    a, b = make_arms([str(student.parent), teacher], None, None, 7.5)
    assert (a.label, a.kind, a.steps, b.label, b.kind, b.steps) == (
        "run", "student", 2, "teacher", "teacher", 50)
    a, b = make_arms([teacher, teacher], None, [4, 50], 7.5)
    assert (a.label, b.label, a.steps) == ("teacher", "teacher-2", 4)
    with pytest.raises(ConfigError, match=f"model {tmp_path / 'nope'} does not exist"):
        make_arms([str(tmp_path / "nope"), teacher], None, None, 7.5)
    with pytest.raises(ConfigError, match="org/model is not a local folder.*--kinds student,teacher"):
        make_arms(["org/model", teacher], None, None, 7.5)
    with pytest.raises(ConfigError, match="not a diffusers pipeline folder"):
        make_arms([str(tmp_path), teacher], None, None, 7.5)
    with pytest.raises(ConfigError, match="--steps takes two values"):
        make_arms([teacher, teacher], None, [2], 7.5)
    with pytest.raises(ConfigError, match="'judge' is neither student nor teacher"):
        make_arms([teacher, teacher], ["judge", "teacher"], None, 7.5)


@pytest.fixture(scope="module")
def world_student(tmp_path_factory) -> Path:
    """A w-conditioned student of the shipped world teacher (its weights), as the demo's test."""
    from rewardkit.backbones.stable_diffusion import StableDiffusionBackbone
    from rewardkit.world.assets import TEACHER, asset_path

    backbone = StableDiffusionBackbone(str(asset_path(TEACHER)))
    return backbone.save_pipeline(backbone.build_student(),
                                  tmp_path_factory.mktemp("vote") / "student" / "pipeline")


def test_the_command_samples_both_models_ahead_with_evals_seeds_and_resumes(world_student,
                                                                            tmp_path, capsys):
    from rewardkit import cli
    from rewardkit.sampling import load_pipeline, run_pipeline
    from rewardkit.world.assets import TEACHER, asset_path

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle on a white background\n"
                       "a small blue square on a yellow background\n")
    votes = tmp_path / "study" / "votes.jsonl"
    args = ["vote", str(world_student), str(asset_path(TEACHER)), "--prompts", str(prompts),
            "--steps", "2,4", "-k", "2", "--seed", "5", "-o", str(votes), "--prepare-only",
            "--device", "cpu"]
    assert cli.run(args) == 0
    folder = tmp_path / "study" / "votes-images"
    study_file = json.loads((folder / "study.json").read_text())
    assert study_file["title"] == "student (2 steps) vs teacher (4 steps)"
    student_images = sorted((folder / "images" / "student" / "steps-2").glob("*.png"))
    teacher_images = sorted((folder / "images" / "teacher" / "steps-4").glob("*.png"))
    assert [p.name for p in student_images] == [f"{i:05d}.png" for i in range(4)]
    assert len(teacher_images) == 4
    # pair i: prompt i // 2, seed 5 + i, in one batch, as eval samples them
    pipe = load_pipeline(str(asset_path(TEACHER)), "ddim", "cpu")
    lines = prompts.read_text().splitlines()
    expected = run_pipeline(pipe, [lines[i // 2] for i in range(4)], 4, 7.5, batch_size=8,
                            seeds=[5, 6, 7, 8]).images
    for path, image in zip(teacher_images, expected):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))
    # a second run samples nothing: every image is kept
    stamps = [p.stat().st_mtime_ns for p in student_images + teacher_images]
    teacher_images[1].unlink()
    assert cli.run(args) == 0
    assert teacher_images[1].is_file()
    assert [p.stat().st_mtime_ns for i, p in enumerate(student_images + teacher_images)
            if i != 5] == [s for i, s in enumerate(stamps) if i != 5]
    assert "4 pairs; images in" in capsys.readouterr().err


def test_a_missing_model_is_named_before_anything_samples(tmp_path, capsys):
    from rewardkit import cli
    from rewardkit.world.assets import TEACHER, asset_path

    code = cli.run(["vote", str(tmp_path / "missing"), str(asset_path(TEACHER)), "--prompts",
                    "world", "-o", str(tmp_path / "v.jsonl"), "--prepare-only"])
    assert code == 1
    assert f"model {tmp_path / 'missing'} does not exist" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "v-images").exists()
