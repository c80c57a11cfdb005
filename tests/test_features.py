import numpy as np
import pytest

from tunelab.core.config import RuntimeConfig
from tunelab.encoders.features import FeatureCache, cached_features
from tunelab.encoders.text import FeatureConfig, TextFeatureExtractor, length_sorted_batches, pad_batch
from tunelab.models.resolve import resolve_model

TEXTS = ["good film", "the worst , most boring and tedious movie of the year",
         "a", "fun and charming story with a dog and a cat", "bad"]


def extractor(model_dir, **kwargs):
    return TextFeatureExtractor(resolve_model(str(model_dir)), FeatureConfig(**kwargs),
                                RuntimeConfig(device="cpu", precision="fp32"))


def reference_vectors(model_dir, texts, pooling):
    """One text at a time, no padding at all: what batching must reproduce."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            hidden = model(**{k: v for k, v in enc.items() if k != "token_type_ids"}).last_hidden_state[0]
            out.append(hidden[0] if pooling == "cls" else hidden.mean(0))
    return torch.stack(out).numpy()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_batched_sorted_padded_equals_one_at_a_time(tiny_bert_dir, pooling):
    got = extractor(tiny_bert_dir, pooling=pooling, batch_size=2).encode(TEXTS)
    want = reference_vectors(tiny_bert_dir, TEXTS, pooling)
    assert got.shape == (5, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_pooling_differs_and_order_is_kept(tiny_bert_dir):
    cls = extractor(tiny_bert_dir, pooling="cls").encode(TEXTS)
    mean = extractor(tiny_bert_dir, pooling="mean").encode(TEXTS)
    assert not np.allclose(cls, mean)
    reversed_ = extractor(tiny_bert_dir, pooling="cls").encode(TEXTS[::-1])
    np.testing.assert_allclose(reversed_[::-1], cls, atol=1e-5)


def test_max_length_truncates(tiny_bert_dir):
    ex = extractor(tiny_bert_dir, max_length=4)
    assert max(len(ids) for ids in ex.tokenize(TEXTS)) == 4


def test_bf16_is_close_to_fp32(tiny_bert_dir):
    fp32 = extractor(tiny_bert_dir, pooling="mean").encode(TEXTS)
    ex = TextFeatureExtractor(resolve_model(str(tiny_bert_dir)), FeatureConfig(pooling="mean"),
                              RuntimeConfig(device="cpu", precision="bf16"))
    bf16 = ex.encode(TEXTS)
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, fp32, atol=0.1)


def test_cache_hit_and_key(tiny_bert_dir, tmp_path):
    cache = FeatureCache(tmp_path)
    ex = extractor(tiny_bert_dir)
    first, hit1 = cached_features(ex, TEXTS, "x", cache)
    second, hit2 = cached_features(extractor(tiny_bert_dir), TEXTS, "x", cache)
    assert (hit1, hit2) == (False, True)
    np.testing.assert_array_equal(first, second)
    keys = {ex.cache_key(TEXTS), extractor(tiny_bert_dir, max_length=8).cache_key(TEXTS), ex.cache_key(TEXTS[:-1])}
    assert len(keys) == 3
    # Every pooling comes from one forward pass and one cache entry.
    assert extractor(tiny_bert_dir, pooling="mean").cache_key(TEXTS) == ex.cache_key(TEXTS)
    mean, hit = cached_features(extractor(tiny_bert_dir, pooling="mean"), TEXTS, "x", cache)
    assert hit is True
    np.testing.assert_allclose(mean, extractor(tiny_bert_dir, pooling="mean").encode(TEXTS), atol=1e-6)
    assert not list(cache.root.glob("*.tmp"))


def test_pairs_encode_jointly_with_segment_ids(tiny_bert_dir):
    """cross: the tokenizer's pair input (token type ids marking the second text), equal to
    encoding that one pair alone."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tunelab.data.text import TextInputs
    from tunelab.encoders.features import pair_features

    inputs = TextInputs(TEXTS[:3], TEXTS[2:5])
    joint = extractor(tiny_bert_dir, pooling="cls", batch_size=2).encode(inputs)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    with torch.no_grad():
        enc = tok(TEXTS[1], TEXTS[3], return_tensors="pt")
        want = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[0, 0]
    np.testing.assert_allclose(joint[1], want.numpy(), atol=1e-5)
    bi, _ = pair_features(extractor(tiny_bert_dir, pooling="mean"), inputs, "bi", "x", None)
    u = extractor(tiny_bert_dir, pooling="mean").encode(TEXTS[:3])
    v = extractor(tiny_bert_dir, pooling="mean").encode(TEXTS[2:5])
    np.testing.assert_allclose(bi, np.concatenate([u, v, np.abs(u - v), u * v], axis=1), atol=1e-6)


def test_padding_and_batches():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    batches = length_sorted_batches([1, 5, 3, 4], 2)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 0]]


def test_tokenisation_is_shared_between_runs_of_a_process(tiny_bert_dir):
    from transformers import AutoTokenizer

    from tunelab.encoders.text import tokenize_inputs

    first = tokenize_inputs(AutoTokenizer.from_pretrained(tiny_bert_dir), TEXTS, 64)
    again = tokenize_inputs(AutoTokenizer.from_pretrained(tiny_bert_dir), TEXTS, 64)  # another run's tokenizer
    assert again is first
    assert tokenize_inputs(AutoTokenizer.from_pretrained(tiny_bert_dir), TEXTS, 8) is not first


def test_padding_rounds_lengths_up_on_gpus_only():
    torch = pytest.importorskip("torch")
    from tunelab.core.runtime import length_multiple
    from tunelab.encoders.text import pad_batch

    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, multiple=4)
    assert ids.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]] and mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert pad_batch([[1] * 9], pad_id=0, multiple=4)[0].shape == (1, 12)
    assert pad_batch([[1] * 9], pad_id=0)[0].shape == (1, 9)
    assert length_multiple(torch.device("cuda")) == 32 and length_multiple(torch.device("cpu")) == 1
    assert length_multiple("cuda:1") == 32 and length_multiple("cpu") == 1
