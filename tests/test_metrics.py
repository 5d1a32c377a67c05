"""CLIP score and Fréchet distance against closed forms; the FID Inception and ResNet-50
definitions against the facts of the files they load."""

import math

import numpy as np
import pytest
import torch
from weights import save_random_inception

from advunlearn_fast.errors import UserError
from advunlearn_fast.evaluation.fid_inception import FIDInception, load_fid_inception, resize_bilinear_tf1
from advunlearn_fast.evaluation.metrics import clip_scores, fid, frechet_distance, gaussian_statistics
from advunlearn_fast.evaluation.resnet50 import ResNet50, imagenet_preprocess, load_resnet50


def test_clip_score_is_100_times_the_cosine_clamped_at_zero():
    images = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 1.0], [0.0, 5.0], [-1.0, 0.2]])
    scores = clip_scores(images, texts)
    assert scores.tolist() == pytest.approx([100 / math.sqrt(2), 100.0, 0.0])


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    mu, sigma = gaussian_statistics(x)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.0])
    # Same covariance: only the means differ.
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, abs=1e-9)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    # Isotropic Gaussians: d (a - b)^2.
    d, a, b = 6, 0.5, 2.0
    assert frechet_distance(np.zeros(d), a * a * np.eye(d), np.zeros(d), b * b * np.eye(d)) == pytest.approx(d * (a - b) ** 2)


@pytest.mark.parametrize("n1, n2, dim", [(8, 5, 64), (300, 400, 8)])  # sample-space and covariance-space paths
def test_fid_of_features(n1, n2, dim):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n1, dim)) * rng.uniform(0.5, 2, size=dim)
    shift = rng.normal(size=dim)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-8 * dim)
    assert fid(x, x + shift) == pytest.approx(shift @ shift, rel=1e-9)
    y = rng.normal(size=(n2, dim)) * 1.5 + 0.3
    assert fid(x, y) == pytest.approx(frechet_distance(*gaussian_statistics(x), *gaussian_statistics(y)), rel=1e-6)


def test_fid_agrees_with_scipy_sqrtm_on_full_rank_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 10)), rng.normal(size=(150, 10)) @ rng.normal(size=(10, 10)) * 0.5
    (mu1, s1), (mu2, s2) = gaussian_statistics(x), gaussian_statistics(y)
    usual = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(usual, rel=1e-8)


def test_resize_is_tensorflow_1_bilinear():
    x = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2).expand(1, 1, 4, 2)
    # TF1 maps target i to source i * in / out (torch's half-pixel rule gives 0, 2.5, 7.5, 10).
    assert resize_bilinear_tf1(x, 4)[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 10.0]
    image = torch.rand(2, 3, 299, 299) * 255
    assert torch.equal(resize_bilinear_tf1(image, 299), image)


def test_fid_inception_scales_pixels_as_t2ibenchmark(tmp_path):
    """AdvUnlearn's FIDs come from T2IBenchmark, whose feature extractor feeds the network
    `2 * ToTensor()(pixels) - 1` (T2IBenchmark/feature_extractors/inceptionV3_feature_extractor.py),
    ToTensor being uint8 / 255 in float32; not torch-fidelity's (x - 128) / 128."""
    net = load_fid_inception(save_random_inception(tmp_path / "pt_inception.pth"), "--inception x")
    pixels = np.random.default_rng(3).integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)
    pixels[0, 0, :3] = [[0, 0, 0], [255, 255, 255], [128, 128, 128]]

    def t2ibenchmark(image):  # a transcription: torchvision's to_tensor of a uint8 array, then 2x - 1
        x = torch.from_numpy(image.transpose((2, 0, 1))).contiguous().to(dtype=torch.float32).div(255)
        return 2 * x - 1

    seen = []
    net.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    features = net(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    expected = torch.stack([t2ibenchmark(image) for image in pixels])
    assert torch.equal(seen[0], expected)
    assert seen[0][0, :, 0, :3].flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1] * 3, abs=1e-7)
    assert features.shape == (2, 2048)


def test_fid_inception_loads_the_standard_layout(tmp_path):
    path = save_random_inception(tmp_path / "pt_inception.pth")
    net = load_fid_inception(path, "--inception x")
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    features = net(images)
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert not torch.equal(features[0], features[1])
    # Missing keys, and a file that is not a state dict of tensors, are one clear error each.
    torch.save({k: v for k, v in FIDInception().state_dict().items() if "Mixed_7c" not in k}, tmp_path / "cut.pth")
    with pytest.raises(UserError, match="is not the FID Inception weights .* missing"):
        load_fid_inception(tmp_path / "cut.pth", "--inception cut.pth")
    torch.save({"model": object()}, tmp_path / "pickle.pth")
    with pytest.raises(UserError, match="--inception pickle.pth holds objects other than weights"):
        load_fid_inception(tmp_path / "pickle.pth", "--inception pickle.pth")


def test_resnet50_has_torchvisions_layout_and_preprocessing(tmp_path):
    model = ResNet50()
    # torchvision's resnet50: 25,557,032 parameters, 320 state-dict entries.
    assert sum(p.numel() for p in model.parameters()) == 25_557_032 and len(model.state_dict()) == 320
    assert imagenet_preprocess(torch.zeros(1, 3, 300, 400)).shape == (1, 3, 224, 224)
    # A mid-gray image normalises to (0.5 - mean) / std per channel.
    gray = imagenet_preprocess(torch.zeros(1, 3, 16, 16))[0, :, 100, 100]
    assert gray.tolist() == pytest.approx([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225], abs=1e-6)
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, tmp_path / "head.pth")
    with pytest.raises(UserError, match="is not a torchvision ResNet-50 state dict"):
        load_resnet50(tmp_path / "head.pth", "judge x")


def test_fid_features_follow_the_clean_convention(tmp_path):
    """AdvUnlearn's FIDs (T2IBenchmark's "clean" resizer): every image centre-cropped to a square
    on its shorter side, resized to 299x299 by PIL's bicubic filter, rounded to uint8, then the
    network; not squashed to 299x299 whatever its aspect ratio."""
    from PIL import Image

    from advunlearn_fast.evaluation.utility import fid_input, inception_features

    net = load_fid_inception(save_random_inception(tmp_path / "pt_inception.pth"), "--inception x")
    rng = np.random.default_rng(0)
    wide, tall = rng.integers(0, 256, (40, 64, 3), dtype=np.uint8), rng.integers(0, 256, (51, 30, 3), dtype=np.uint8)

    def clean(pixels, top, left, side):
        square = Image.fromarray(pixels[top : top + side, left : left + side])
        return torch.from_numpy(np.asarray(square.resize((299, 299), Image.BICUBIC)).copy()).permute(2, 0, 1)

    expected = [clean(wide, 0, 12, 40), clean(tall, 10, 0, 30)]
    given = [torch.from_numpy(p).permute(2, 0, 1) for p in (wide, tall)]
    assert all(torch.equal(fid_input(g), e) for g, e in zip(given, expected))
    features = inception_features(net, given, torch.device("cpu"))
    np.testing.assert_allclose(features, net(torch.stack(expected)).double().numpy(), rtol=1e-5, atol=1e-6)
    squashed = net(given[0][None]).double().numpy()  # the network's own resize of the whole image
    assert not np.allclose(features[:1], squashed, rtol=1e-3)
