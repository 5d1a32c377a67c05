import pytest

from advunlearn_fast.errors import UserError
from advunlearn_fast.models.tiny import build_tiny_model
from advunlearn_fast.training.layers import parse_layer_spec, text_encoder_parameters, unet_parameters


@pytest.mark.parametrize(
    "spec, expected",
    [("all", list(range(12))), ("0-5", [0, 1, 2, 3, 4, 5]), ("0,1,2", [0, 1, 2]), ("1", [1]), ("0-1, 10", [0, 1, 10])],
)
def test_layer_specs(spec, expected):
    assert parse_layer_spec(spec, 12) == expected


@pytest.mark.parametrize("spec", ["12", "0-12", "a", "3-1", "", "1,,2", "-1"])
def test_bad_layer_specs_are_refused(spec):
    with pytest.raises(UserError, match="--layers"):
        parse_layer_spec(spec, 12)


def test_layer_one_never_selects_ten_or_eleven():
    te = build_tiny_model()["text_encoder"]
    names = text_encoder_parameters(te, [1], "all", final_norm=False)
    assert names and all(n.startswith("encoder.layers.1.") for n in names)
    # The parameter objects are exactly layer 1's.
    own = {id(p) for p in te.encoder.layers[1].parameters()}
    assert {id(p) for p in names.values()} == own


@pytest.mark.parametrize("component, part", [("attn", ".self_attn."), ("mlp", ".mlp.")])
def test_components(component, part):
    te = build_tiny_model()["text_encoder"]
    names = text_encoder_parameters(te, [0, 11], component, final_norm=True)
    layer_names = [n for n in names if n.startswith("encoder.")]
    assert layer_names and all(part in n for n in layer_names)
    assert {n.split(".")[2] for n in layer_names} == {"0", "11"}
    assert "final_layer_norm.weight" in names
    assert not any("embeddings" in n for n in names)


def test_unet_ablation_sets_are_the_authors():
    """ESD-x: the cross-attention layers. ESD-u ('noxattn'): everything else except the time
    embedding and the output layers (CompVis `time_embed`, `out.`), as the authors select it."""
    unet = build_tiny_model()["unet"]
    xattn, rest = unet_parameters(unet, "unet-xattn"), unet_parameters(unet, "unet-noxattn")
    assert xattn and all(".attn2." in n for n in xattn)
    assert set(xattn).isdisjoint(rest)
    left_out = {n for n, _ in unet.named_parameters()} - set(xattn) - set(rest)
    assert left_out == {
        "time_embedding.linear_1.weight", "time_embedding.linear_1.bias",
        "time_embedding.linear_2.weight", "time_embedding.linear_2.bias",
        "conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias",
    }
