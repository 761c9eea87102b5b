"""The README's Keras quick start (the block tagged ``readme-test: keras``), executed as written.

It runs on whichever backend Keras uses: TensorFlow in ``tests-keras``, JAX in ``tests-keras-jax``
(``KERAS_BACKEND=jax``), where the README promises it runs unchanged."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

keras = pytest.importorskip("keras")
if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass

pytestmark = pytest.mark.keras

from readme_blocks import readme_blocks  # noqa: E402

(QUICKSTART,) = readme_blocks("keras")


def test_keras_quickstart_runs(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(str(tmp_path))
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(QUICKSTART, "README.md", "exec"), namespace)
    ranking, model = namespace["ranking"], namespace["model"]
    assert ranking.dominant == "audio" and ranking.budget["backend"] == "keras"  # type: ignore[attr-defined]
    assert model.coefficients == {"audio": 10.0, "visual": 0.5}  # type: ignore[attr-defined]
    loaded = keras.saving.load_model(os.path.join(str(tmp_path), "fused.keras"))
    assert loaded.policy == model.policy and loaded.coefficients == model.coefficients  # type: ignore[attr-defined]
    assert loaded.step_count == model.step_count == 3 * 13  # type: ignore[attr-defined]  # 400 samples, batch 32
