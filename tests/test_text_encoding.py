import torch

from advunlearn_fast.models.text_encoding import encode_hidden, encode_ids, position_table, token_table
from advunlearn_fast.models.tiny import build_tiny_model


def encode_embeddings(te, ids):
    """The hand-run forward from word embeddings plus positions, as the attack feeds it."""
    return encode_hidden(te, token_table(te)[ids] + position_table(te)[: ids.shape[1]])


def test_embedding_forward_equals_stock_forward():
    parts = build_tiny_model()
    te, tok = parts["text_encoder"], parts["tokenizer"]
    ids = tok(["a photo of a cat", "Van Gogh", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        stock = encode_ids(te, ids)
        ours = encode_embeddings(te, ids)
    assert stock.shape == (3, 77, te.config.hidden_size)
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)


def test_embedding_forward_is_causal():
    te = build_tiny_model()["text_encoder"]
    ids = torch.randint(0, te.config.vocab_size, (1, 77))
    changed = ids.clone()
    changed[0, 40:] = (changed[0, 40:] + 1) % te.config.vocab_size
    with torch.no_grad():
        a = encode_embeddings(te, ids)
        b = encode_embeddings(te, changed)
    torch.testing.assert_close(a[:, :40], b[:, :40])
    assert not torch.allclose(a[:, 40:], b[:, 40:])
