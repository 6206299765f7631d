import pytest
import torch

from quantbook import checkpoint


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    tensors = {"w": torch.arange(6, dtype=torch.float32).view(2, 3).t(), "b": torch.ones(2)}
    path = checkpoint.save_tensors(tensors, tmp_path / "sub" / "x.safetensors", {"k": "v"})
    loaded, metadata = checkpoint.load_tensors(path, fix="make one")
    assert metadata == {"k": "v"}
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])
    assert [p.name for p in path.parent.iterdir()] == ["x.safetensors"]  # no temporary left


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = checkpoint.save_tensors({"a": torch.zeros(3)}, tmp_path / "x.safetensors", {})
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_tensors({"a": torch.ones(3)}, path, {})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


def test_metadata_must_be_text(tmp_path):
    with pytest.raises(TypeError, match=r"metadata values must be strings .* \['n'\]"):
        checkpoint.save_tensors({"a": torch.zeros(1)}, tmp_path / "x.safetensors", {"n": 3})


def test_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*: run make checkpoint"):
        checkpoint.load_tensors(tmp_path / "none.safetensors", fix="run make checkpoint")
