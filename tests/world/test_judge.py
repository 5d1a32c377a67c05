import pytest
import torch

from advunlearn_fast.errors import UserError
from advunlearn_fast.world.judge import JudgeSpecError, WorldJudge, judge, parse_judge_spec
from advunlearn_fast.world.render import COLOURS, SHAPES, TEXTURES, render_batch


def test_judge_is_accurate_on_clean_renders():
    scene, images = render_batch(1000, seed=2024)
    labels = WorldJudge().predict(images)
    truth = {
        "colour": [list(COLOURS)[i] for i in scene.colour.tolist()],
        "shape": [SHAPES[i] for i in scene.shape.tolist()],
        "texture": [TEXTURES[i] for i in scene.texture.tolist()],
    }
    for attribute, expected in truth.items():
        accuracy = sum(a == b for a, b in zip(labels[attribute], expected)) / len(expected)
        assert accuracy >= 0.98, f"{attribute}: {accuracy:.1%}"


def test_judge_answers_one_attribute_value_per_image():
    scene, images = render_batch(50, seed=3)
    answers = judge(images, "colour", "red")
    assert answers == [list(COLOURS)[i] == "red" for i in scene.colour.tolist()]


def test_plain_gray_has_no_colour():
    assert WorldJudge().predict(torch.zeros(2, 3, 16, 16))["colour"] == ["none", "none"]


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("world:colour=red", ("colour", "red")),
        ("world:color=Blue", ("colour", "blue")),
        (" world : shape = triangle ", ("shape", "triangle")),
        ("world:texture=striped", ("texture", "striped")),
    ],
)
def test_parse_judge_spec(spec, parsed):
    assert parse_judge_spec(spec) == parsed


@pytest.mark.parametrize(
    "spec, named",
    [
        ("colour=red", "world:<attribute>=<value>"),
        ("nudenet:colour=red", "world:<attribute>=<value>"),
        ("world:size=big", "'size'"),
        ("world:colour=orange", "'orange'"),
        ("world:colour", "''"),
        ("world:shape=red", "'red'"),
    ],
)
def test_parse_judge_spec_refuses_bad_specs(spec, named):
    with pytest.raises(JudgeSpecError) as error:
        parse_judge_spec(spec)
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)
    assert named in str(error.value)
