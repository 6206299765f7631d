import json
import subprocess
import sys
import textwrap

import pytest
import torch

from quantbook.minilm import EMBEDDING_DIM, embed, load_minilm, max_seq_length, model_dir

TEXTS = [
    "A man is playing a guitar.",
    "Quantization maps float weights to 8-bit integers.",
    "",  # only [CLS] and [SEP]
    "Déjà vu: naïve café owners in Zürich ✓",
    "short",
    # about 360 tokens: exercises truncation at max_seq_length
    "The national executive appointed an interim leader. " * 40,
]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def sentence_transformer():
    from sentence_transformers import SentenceTransformer

    # a local folder: sentence-transformers reads it without the hub
    return SentenceTransformer(str(model_dir()), device="cpu")


def test_load_is_silent_offline_and_without_pooler():
    # A fresh interpreter, so that the import-time noise of transformers/torchao would show,
    # with every socket connection refused, so that any network access would fail the load.
    script = textwrap.dedent(
        """
        import socket, json
        attempts = []
        def refuse(*args, **kwargs):  # recorded too, in case a caller swallows the error
            attempts.append(args[1:] or kwargs)
            raise OSError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from quantbook.minilm import load_minilm
        model, tokenizer = load_minilm()
        names = [name for name, _ in model.named_modules()]
        print(json.dumps({
            "training": model.training,
            "pooler": any(name.startswith("pooler") for name in names),
            "class": type(model).__name__,
            "dtype": str(next(model.parameters()).dtype),
            "network_attempts": len(attempts),
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    info = json.loads(done.stdout)
    assert info == {"training": False, "pooler": False, "class": "BertModel",
                    "dtype": "torch.float32", "network_attempts": 0}


def test_max_seq_length_matches_sentence_transformers(sentence_transformer):
    assert max_seq_length() == sentence_transformer.max_seq_length == 256


def test_embed_matches_sentence_transformers(minilm, sentence_transformer):
    model, tokenizer = minilm
    ours = embed(model, tokenizer, TEXTS, batch_size=4)
    reference = sentence_transformer.encode(TEXTS, convert_to_tensor=True, batch_size=4)
    assert ours.shape == (len(TEXTS), EMBEDDING_DIM)
    assert ours.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(ours, reference.cpu().float(), dim=1)
    assert cosine.min() > 0.99999
    assert (ours - reference.cpu()).abs().max() < 1e-5


def test_long_text_is_truncated_to_max_seq_length(minilm):
    model, tokenizer = minilm
    long_text = TEXTS[-1]
    ids = tokenizer(long_text)["input_ids"]
    assert len(ids) > 256
    # the first 254 word pieces between [CLS] and [SEP], decoded back to text
    head = tokenizer.decode(ids[1:255])
    both = embed(model, tokenizer, [long_text, head])
    assert torch.allclose(both[0], both[1], atol=1e-5)


def test_rows_have_unit_norm_and_batching_does_not_change_them(minilm):
    model, tokenizer = minilm
    one_by_one = embed(model, tokenizer, TEXTS[:5], batch_size=1)
    together = embed(model, tokenizer, TEXTS[:5], batch_size=5)
    assert torch.allclose(one_by_one.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.allclose(one_by_one, together, atol=1e-5)


def test_embed_errors(minilm):
    model, tokenizer = minilm
    with pytest.raises(TypeError, match=r"single string: pass a list of strings, e\.g\. \[text\]"):
        embed(model, tokenizer, "a sentence")
    with pytest.raises(ValueError, match=r"texts=\[\] is empty"):
        embed(model, tokenizer, [])
    with pytest.raises(TypeError, match=r"texts must contain only str, found \['int'\]"):
        embed(model, tokenizer, ["fine", 3])
    with pytest.raises(ValueError, match=r"batch_size=0 is not supported: choose an integer >= 1"):
        embed(model, tokenizer, ["x"], batch_size=0)
    with pytest.raises(ValueError, match=r"max_length=513 is not supported: choose 1\.\.512"):
        embed(model, tokenizer, ["x"], max_length=513)


def test_model_card_facts_chapter_01_states():
    """Chapter 01 describes the model from its shipped card: base model, data, shape."""
    card = (model_dir() / "README.md").read_text()
    assert "nreimers/MiniLM-L6-H384-uncased" in card
    assert "contrastive" in card and "above 1 billion" in card
    config = json.loads((model_dir() / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 and config["hidden_size"] == 384
