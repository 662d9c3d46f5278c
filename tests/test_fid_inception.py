"""FID and KID with the standard Inception network, offline: a randomly initialised copy of
torch-fidelity's network stands in for the published weights (which cannot be downloaded
here), and the plumbing must give torchmetrics' own FID on the same images.

Runs in the torchvision venv (``make test-plugins``; torch-fidelity needs torchvision); the core
venv skips it.
"""

from __future__ import annotations

import pickle

import pytest
import torch

pytest.importorskip("torch_fidelity")

from rewardkit.errors import ConfigError  # noqa: E402
from rewardkit.evaluation.metrics import FID, KID  # noqa: E402


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A state dict of torch-fidelity's FID Inception with random weights (built offline)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    original = torch.nn.Module.load_state_dict
    torch.nn.Module.load_state_dict = lambda self, *a, **k: None  # keep the random init
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity
    fetch = fidelity.load_state_dict_from_url
    fidelity.load_state_dict_from_url = lambda *a, **k: {}
    try:
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        torch.nn.Module.load_state_dict = original
        fidelity.load_state_dict_from_url = fetch
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def images(seed: int, count: int = 6) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_fid_equals_torchmetrics_own_fid_on_the_same_images(random_weights):
    from torchmetrics.image.fid import FrechetInceptionDistance

    generated, reference = images(1), images(2)
    ours = FID(weights=str(random_weights)).compute(generated, reference)["fid"]
    library = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(random_weights))
    library.update((reference * 255).round().to(torch.uint8), real=True)
    library.update((generated * 255).round().to(torch.uint8), real=False)
    assert ours == pytest.approx(float(library.compute()), rel=1e-6)
    assert ours > 0
    same = FID(weights=str(random_weights)).compute(reference, reference)["fid"]
    assert abs(same) < 1e-3 * ours


def test_kid_reports_mean_and_std(random_weights):
    result = KID(weights=str(random_weights), subsets=3, subset_size=4).compute(images(1), images(2))
    assert set(result) == {"kid", "kid_std"} and result["kid_std"] >= 0


def test_rows_against_one_reference_set_give_what_a_fresh_metric_gives(random_weights):
    """FID and KID keep the reference features across rows; each row still equals a metric
    built for it alone (KID with a smaller second row too: its subset size follows the row)."""
    reference = images(2, count=8)
    fid, kid = FID(weights=str(random_weights)), KID(weights=str(random_weights), subsets=3, subset_size=6)
    for seed, count in ((1, 8), (3, 5)):
        generated = images(seed, count)
        assert fid.compute(generated, reference)["fid"] == pytest.approx(
            FID(weights=str(random_weights)).compute(generated, reference)["fid"], rel=1e-6)
        torch.manual_seed(0)  # KID draws its subsets from torch's global generator
        again = kid.compute(generated, reference)
        torch.manual_seed(0)
        fresh = KID(weights=str(random_weights), subsets=3, subset_size=6).compute(generated, reference)
        assert again == pytest.approx(fresh, rel=1e-6)


def test_a_weights_file_that_would_run_code_is_refused(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"Conv2d_1a_3x3.conv.weight": Payload()}))
    with pytest.raises(ConfigError, match="evil.pth.*not loaded.*nothing in it was run"):
        FID(weights=str(path)).compute(images(1), images(2))
    assert "must never run" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="do not exist"):
        FID(weights=str(tmp_path / "missing.pth")).compute(images(1), images(2))
