"""The framework-neutral Split and its thin torch / tf.data adapters."""

from __future__ import annotations

import numpy as np
import pytest

from pdmp.datasets import MultimodalDataset, Split, stratified_split


def toy(n: int = 10) -> MultimodalDataset:
    rng = np.random.default_rng(0)

    def split(k: int) -> Split:
        return Split({"image": rng.random((k, 1, 4, 4)), "vec": rng.random((k, 3))}, np.arange(k) % 3)

    return MultimodalDataset("toy", ("image", "vec"), ("a", "b", "c"), split(n), split(4), split(4))


def test_split_validates_and_casts():
    ds = toy()
    assert ds.train.inputs["image"].dtype == np.float32 and ds.train.labels.dtype == np.int64
    assert ds.num_classes == 3 and ds.shapes() == {"image": (1, 4, 4), "vec": (3,)}
    assert "toy: 3 classes, train/val/test 10/4/4" in ds.summary()
    with pytest.raises(ValueError, match="modality 'x' has 2 rows but there are 3 labels"):
        Split({"x": np.zeros((2, 1))}, np.zeros(3))
    with pytest.raises(ValueError, match=r"labels outside 0\.\.1"):
        MultimodalDataset("bad", ("vec",), ("a", "b"), *(Split({"vec": np.zeros((3, 1))}, [0, 1, 2]),) * 3)
    with pytest.raises(KeyError, match="unknown modality 'imgae'; known: image, vec"):
        ds.train.select(["imgae"])
    with pytest.raises(KeyError, match="unknown split"):
        ds.split("dev")
    sub = ds.train.subset(np.array([1, 2]))
    assert len(sub) == 2 and sub.select(["vec"]).modalities == ("vec",)


def test_stratified_split_is_a_partition():
    labels = np.repeat(np.arange(4), 10)
    parts = stratified_split(labels, (0.5, 0.3, 0.2), np.random.default_rng(0))
    assert [len(p) for p in parts] == [20, 12, 8]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(40))
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(labels, (0.5, 0.6), np.random.default_rng(0))


@pytest.mark.torch
def test_torch_dataset_and_loader():
    torch = pytest.importorskip("torch")
    from pdmp.datasets import torch_dataset, torch_loader

    ds = toy()
    tds = torch_dataset(ds.train)
    x, y = tds[3]
    assert len(tds) == 10 and set(x) == {"image", "vec"} and int(y) == 0
    assert torch.equal(x["image"], torch.from_numpy(ds.train.inputs["image"][3]))
    assert ds.train.to_torch(modalities=("vec",))[0][0].keys() == {"vec"}
    batches = list(torch_loader(ds.train, batch_size=4, shuffle=True, seed=1))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert batches[0][0]["image"].shape == (4, 1, 4, 4) and batches[0][1].dtype == torch.int64
    again = list(torch_loader(ds.train, batch_size=4, shuffle=True, seed=1))
    assert torch.equal(batches[0][1], again[0][1])
    seen = torch.cat([b[1] for b in batches]).sort().values
    assert torch.equal(seen, torch.from_numpy(np.sort(ds.train.labels)))


@pytest.mark.keras
def test_tf_dataset():
    tf = pytest.importorskip("tensorflow")
    from pdmp.datasets import tf_dataset

    ds = toy()
    batches = list(tf_dataset(ds.train, 4).as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(batches[0][0]["image"], ds.train.inputs["image"][:4])
    assert batches[0][1].dtype == np.int64
    last = ds.train.to_tf(batch_size=16, channels_last=True)
    x, _ = next(iter(last))
    assert tuple(x["image"].shape) == (10, 4, 4, 1) and x["image"].dtype == tf.float32


def test_importing_datasets_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, pdmp, pdmp.datasets; "
        "bad = [m for m in ('torch', 'torchaudio', 'tensorflow', 'keras', 'PIL') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
