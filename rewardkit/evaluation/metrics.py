"""Distribution metrics (FID, KID, any Frechet distance on features) through torchmetrics.

torchmetrics is used rather than torch-fidelity or clean-fid directly because it takes *any*
feature network (``FrechetInceptionDistance(feature=module)``), so the standard Inception FID,
a Frechet distance on another network (the embedded world's feature net) and KID all run
through one well-kept implementation (float64 statistics, its own matrix square root). The
standard FID network is torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port of the TF
graph, ``pip install 'rewardkit[fid]'``) with the published weights, from torch-fidelity's
release through the torch hub cache or from a local file; both are read with
``weights_only=True`` (see :func:`_inception`). clean-fid was not chosen: it has no pluggable
feature network and its CLIP-FID needs open_clip (and so torchvision) in the core.

A metric's ``compute(generated, reference)`` takes ``[N, 3, H, W]`` images in [0, 1].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError


class DistributionMetric(ABC):
    """A metric of a *set* of images against reference images (not one score per image)."""

    name = "distribution-metric"

    @abstractmethod
    def compute(self, generated: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """``{name: value}`` of ``[N, 3, H, W]`` generated images against reference images."""


class FeatureModule(nn.Module):
    """Adapts a feature function to torchmetrics: float images in [0, 1] in, ``[N, D]`` out,
    with ``num_features`` set (so torchmetrics does not probe it with a 299 px dummy)."""

    def __init__(self, features: nn.Module | Any, num_features: int) -> None:
        super().__init__()
        self.net = features if isinstance(features, nn.Module) else None
        self._fn = features
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._fn(images).float()


def _uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def _check(generated: torch.Tensor, reference: torch.Tensor, name: str, minimum: int = 2) -> None:
    for label, images in (("generated", generated), ("reference", reference)):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"metric '{name}' takes [N, 3, H, W] images; {label} has shape "
                              f"{tuple(images.shape)}")
        if images.shape[0] < minimum:
            raise ConfigError(f"metric '{name}' needs at least {minimum} {label} images, got "
                              f"{images.shape[0]}")


class ReferenceFeatures:
    """A torchmetrics distribution metric whose reference (real-image) half is filled once per
    reference set and kept across rows.

    An evaluation scores every (model, steps) row against one reference set (30,000 COCO images
    for FID-30k); filling the reference half per row would repeat the feature pass over every
    reference image for every row. torchmetrics keeps the real features across ``reset()`` when the
    metric is built with ``reset_real_features=False``, so a later call with the very same
    reference tensor (the runner caches one per resolution) only resets the generated half; a
    different tensor builds the metric afresh. The tensor is compared by identity and held, so
    its id cannot be reused by another set.
    """

    def __init__(self) -> None:
        self._reference: torch.Tensor | None = None
        self._metric: Any = None

    def metric(self, make: Callable[[], Any], reference: torch.Tensor,
               prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 64) -> Any:
        """``make()``'s metric with ``reference`` as its real half and an empty generated half."""
        if self._metric is not None and self._reference is reference:
            self._metric.reset()
            return self._metric
        metric = make()
        with torch.no_grad():
            for start in range(0, len(reference), batch_size):
                metric.update(prepare(reference[start:start + batch_size]), real=True)
        self._metric, self._reference = metric, reference
        return metric


def frechet_distance(features: nn.Module, generated: torch.Tensor, reference: torch.Tensor,
                     batch_size: int = 64, cache: ReferenceFeatures | None = None) -> float:
    """torchmetrics' Frechet distance of ``features`` (a :class:`FeatureModule` or torchmetrics'
    Inception) between two image sets (the Inception expects uint8, a FeatureModule floats).
    With a ``cache``, the reference features are computed once per reference set."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    def make() -> Any:
        metric = FrechetInceptionDistance(feature=features, reset_real_features=False)
        metric.used_custom_model = True  # we feed each network what it expects ourselves
        return metric

    prepare = (lambda x: x) if isinstance(features, FeatureModule) else _uint8
    metric = (cache or ReferenceFeatures()).metric(make, reference, prepare, batch_size)
    with torch.no_grad():
        for start in range(0, len(generated), batch_size):
            metric.update(prepare(generated[start:start + batch_size]), real=False)
        return float(metric.compute())


def inception_state(weights: str | None, metric: str = "fid") -> dict[str, torch.Tensor]:
    """The FID Inception weights as tensors, read without running pickled code: a local
    ``.pth`` / ``.safetensors`` file, or (``None``) torch-fidelity's published file through the
    torch hub cache, both loaded with ``weights_only=True``."""
    if weights is None:
        from torch.hub import load_state_dict_from_url
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        try:
            return load_state_dict_from_url(URL_INCEPTION_V3, map_location="cpu", weights_only=True)
        except (OSError, ConnectionError) as exc:  # offline (URLError is an OSError)
            raise ConfigError(f"metric '{metric}': could not download the FID Inception weights "
                              f"({type(exc).__name__}); download {URL_INCEPTION_V3} and pass it "
                              f"with --metric-param {metric}.weights=PATH") from None
        except Exception as exc:  # a corrupt cached file, refused by the weights-only reader
            raise ConfigError(f"metric '{metric}': the cached FID Inception weights from "
                              f"{URL_INCEPTION_V3} were not loaded ({type(exc).__name__}: {exc}); "
                              "delete the file from the torch hub cache (torch.hub.get_dir()) "
                              "to download it again") from None
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"metric '{metric}': FID Inception weights {path} do not exist; pass the "
                          "weights-inception-2015-12-05 .pth file torch-fidelity publishes")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:  # weights_only: a pickle that would run code is refused
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # tampered (refused by the weights-only unpickler), truncated
        reason = ("it holds objects other than plain tensors, which could run code"
                  if "Weights only load failed" in str(exc) else type(exc).__name__)
        raise ConfigError(f"metric '{metric}': FID Inception weights file {path} was not loaded "
                          f"({reason}); nothing in it was run") from None
    if not isinstance(state, dict):
        raise ConfigError(f"metric '{metric}': FID Inception weights {path} hold no state dict")
    return state


def _inception(weights: str | None, feature: int = 2048, metric: str = "fid") -> nn.Module:
    """torchmetrics' FID Inception (torch-fidelity's network) with :func:`inception_state`.

    torch-fidelity reads a local weights file with ``torch.load(weights_only=False)``, which
    would run any code pickled into it; so rewardkit reads the tensors itself and hands them to
    the library's constructor in place of its own download.
    """
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as fidelity
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise ConfigError(f"metric '{metric}' needs torch-fidelity for the standard Inception "
                          "network: pip install 'rewardkit[fid]'") from None
    state = inception_state(weights, metric)
    original = fidelity.load_state_dict_from_url
    fidelity.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)])
    except RuntimeError as exc:  # wrong or partial state dict
        where = weights or fidelity.URL_INCEPTION_V3
        raise ConfigError(f"metric '{metric}': the Inception weights {where} do not fit the "
                          f"network ({str(exc)[:200]})") from None
    finally:
        fidelity.load_state_dict_from_url = original


class FID(DistributionMetric):
    """FID (Heusel et al. 2017) with the standard Inception-v3 pool features (2048-d), as
    reported by the papers, computed by torchmetrics.

    Args:
        weights: a local copy of the FID Inception weights (torch-fidelity's
            ``weights-inception-2015-12-05-6726825d.pth``); default: downloaded from
            torch-fidelity's release into the torch hub cache.
        feature: Inception feature layer (64, 192, 768 or 2048).
    """

    name = "fid"

    def __init__(self, weights: str | None = None, feature: int = 2048) -> None:
        self.weights, self.feature = weights, feature
        self._net: nn.Module | None = None
        self._references = ReferenceFeatures()

    @property
    def network(self) -> nn.Module:
        """The Inception network (built on first use)."""
        if self._net is None:
            self._net = _inception(self.weights, self.feature, self.name)
        return self._net

    def compute(self, generated: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """``{"fid": value}``."""
        _check(generated, reference, self.name)
        return {self.name: frechet_distance(self.network, generated, reference,
                                            cache=self._references)}


class KID(DistributionMetric):
    """KID (Binkowski et al. 2018) on the same Inception features, by torchmetrics: mean and
    standard deviation over ``subsets`` random subsets of ``subset_size`` images.

    Args:
        weights: a local copy of the FID Inception weights (see ``fid``).
        subsets: number of random subsets.
        subset_size: images per subset (at most the smaller set's size).
    """

    name = "kid"

    def __init__(self, weights: str | None = None, subsets: int = 100,
                 subset_size: int = 1000) -> None:
        self.weights, self.subsets, self.subset_size = weights, subsets, subset_size
        self._net: nn.Module | None = None
        self._references = ReferenceFeatures()

    def compute(self, generated: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """``{"kid": mean, "kid_std": std}``."""
        from torchmetrics.image.kid import KernelInceptionDistance

        _check(generated, reference, self.name)
        if self._net is None:
            self._net = _inception(self.weights, metric=self.name)
        size = min(self.subset_size, len(generated), len(reference))
        metric = self._references.metric(
            lambda: KernelInceptionDistance(feature=self._net, subsets=self.subsets,
                                            subset_size=size, reset_real_features=False),
            reference, _uint8)
        metric.subset_size = size  # the generated half may be smaller than the first row's
        with torch.no_grad():
            metric.update(_uint8(generated), real=False)
            mean, std = metric.compute()
        return {self.name: float(mean), f"{self.name}_std": float(std)}


class CLIPFID(DistributionMetric):
    """CLIP-FID (Kynkaanniemi et al. 2023): the Frechet distance of CLIP image embeddings
    instead of Inception features, less tied to ImageNet classes; the CLIP model loads through
    transformers (no torchvision), the distance is torchmetrics'.

    Args:
        model: a CLIP model, hub id or folder (default ViT-B/32, as clean-fid's CLIP-FID).
        device: where CLIP runs.
    """

    name = "clip-fid"

    def __init__(self, model: str = "openai/clip-vit-base-patch32", device: str = "cpu") -> None:
        from ..rewards.clip_score import CLIPScore

        self.clip = CLIPScore(model=model, device=device)
        self._references = ReferenceFeatures()

    def compute(self, generated: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """``{"clip-fid": value}``."""
        from ..rewards.clip_base import features

        _check(generated, reference, self.name)
        clip = self.clip

        def embed(images: torch.Tensor) -> torch.Tensor:
            pixels = clip.transform(images.to(clip.device, clip.dtype))
            return features(clip.model.get_image_features(pixel_values=pixels)).cpu()

        network = FeatureModule(embed, int(clip.model.config.projection_dim))
        return {self.name: frechet_distance(network, generated, reference, cache=self._references)}


BUILTIN_METRICS = (FID, KID, CLIPFID)
