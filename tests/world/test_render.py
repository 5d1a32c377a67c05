import torch

from advunlearn_fast.world.render import COLOURS, IMAGE_SIZE, SHAPES, TEXTURES, render_batch


def test_renders_are_deterministic_for_a_seed():
    scene_a, images_a = render_batch(32, seed=7)
    scene_b, images_b = render_batch(32, seed=7)
    assert torch.equal(images_a, images_b)
    assert torch.equal(scene_a.colour, scene_b.colour)
    _, images_c = render_batch(32, seed=8)
    assert not torch.equal(images_a, images_c)


def test_renders_are_nchw_in_range_and_cover_every_attribute():
    scene, images = render_batch(600, seed=0)
    assert images.shape == (600, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert set(scene.colour.tolist()) == set(range(len(COLOURS)))
    assert set(scene.shape.tolist()) == set(range(len(SHAPES)))
    assert set(scene.texture.tolist()) == set(range(len(TEXTURES)))
