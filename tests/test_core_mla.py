"""MLA in the core (pdmp.rebalancing.MLA, HeadProjector, entropy_fusion_weights, owm_alpha) against NumPy
transcriptions of Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation (commit ab6c184):
``utils/utils.py`` ``GSPlugin.before_update`` and ``main.py`` ``calculate_entropy``,
``calculate_gating_weights(3)``, the ``gs_flag`` branches of ``train_epoch`` (the order of the passes and
``exp_count``) and ``valid`` (the fused prediction). Loops and branches as written there, on arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

from pdmp.policies import policy_from_config
from pdmp.rebalancing import MLA, HeadProjector, LossTerms, entropy_fusion_weights, owm_alpha

MODALITIES = ("audio", "visual")


class ReferenceGSPlugin:
    """``GSPlugin`` with ``Pl = eye(dim)``; ``weight_name`` is the name the reference's filter looks for."""

    def __init__(self, dim: int, weight_name: str = "module.weight") -> None:
        self.Pl = np.eye(dim)
        self.exp_count = 0
        self.weight_name = weight_name

    def before_update(self, named_parameters, before_batch_input, batch_index, len_dataloader, train_exp_counter):
        lamda = batch_index / len_dataloader + 1
        alpha = 1.0 * 0.1**lamda
        if train_exp_counter != 0:
            for n, w in named_parameters:
                if n == self.weight_name:
                    r = np.mean(before_batch_input, 0, keepdims=True)
                    k = self.Pl @ r.T
                    self.Pl = self.Pl - (k @ k.T) / (alpha + k @ r)  # torch.mm(k, r): d x 1 times 1 x d
                    pnorm2 = np.linalg.norm(self.Pl, "fro")
                    self.Pl = self.Pl / pnorm2
                    w["grad"] = w["grad"] @ self.Pl.T


def reference_calculate_entropy(output: np.ndarray) -> float:
    e = np.exp(output - output.max(axis=0, keepdims=True))
    probabilities = e / e.sum(axis=0, keepdims=True)  # F.softmax(output, dim=0)
    log_probabilities = np.log(probabilities)
    return float(-np.sum(probabilities * log_probabilities))


def reference_gating_weights(*outputs: np.ndarray) -> list[float]:
    """``calculate_gating_weights`` (two outputs) and ``calculate_gating_weights3`` (three) alike."""
    entropies = [reference_calculate_entropy(o) for o in outputs]
    max_entropy = max(entropies)
    gating = [np.exp(max_entropy - h) for h in entropies]
    sum_weights = sum(gating)
    return [g / sum_weights for g in gating]


def run_passes(rng, n_epochs, n_batches, dim, classes, reference_name, projection):
    """Drive the reference plugin and the core policy through the same passes (modality order, batches,
    epochs); return, per pass, the head weight gradient after each one's modification."""
    plugin = ReferenceGSPlugin(dim, reference_name)
    policy = MLA(MODALITIES, projection=projection)
    got, expected = [], []
    for _ in range(n_epochs):
        for batch_step in range(n_batches):
            passes = policy.training_passes(step=batch_step, epoch=0)
            assert [p.modalities for p in passes] == [("audio",), ("visual",)]  # the reference: a, then v
            for one in passes:
                features = rng.normal(size=(6, dim)) + (2.0 if one.modalities == ("audio",) else -1.0)
                grad = rng.normal(size=(classes, dim))
                weight = {"grad": grad.copy()}
                plugin.before_update(
                    [("weight", weight), ("bias", {"grad": None})], features, batch_step, n_batches, plugin.exp_count
                )
                plugin.exp_count += 1
                expected.append(weight["grad"])
                matrix = policy.head_projection(features, batch_index=batch_step, n_batches=n_batches)
                got.append(grad if matrix is None else grad @ matrix.T)
    return got, expected, policy, plugin


class TestMLAAgainstReference:
    """Departures (also in MLA's docstring): the reference's filter ``n == "module.weight"`` matches no
    parameter of the ``nn.Linear`` head it is given, so its projection never fires (``projection="off"``
    reproduces that, and is the default); the core fires it with the reference's arithmetic
    (``projection="code"``, checked here against the plugin with the name fixed) or with the scalar
    recursive-least-squares denominator (``projection="rls"``); float64 where the reference's ``Pl`` is
    float32."""

    def test_owm_alpha_is_the_plugin_schedule(self):
        for batch_index, n in [(0, 1), (0, 10), (3, 10), (9, 10), (41, 42)]:
            assert owm_alpha(batch_index, n) == 1.0 * 0.1 ** (batch_index / n + 1)

    def test_code_projection_matches_the_plugin_with_its_name_filter_fixed(self):
        got, expected, policy, plugin = run_passes(
            np.random.default_rng(0), 2, 4, dim=5, classes=3, reference_name="weight", projection="code"
        )
        assert len(got) == 16
        assert np.array_equal(got[0], expected[0])  # the very first pass of training is left alone
        for g, e in zip(got, expected, strict=True):
            assert np.allclose(g, e, rtol=1e-10, atol=1e-12)
        assert np.allclose(policy.projector.matrix, plugin.Pl, rtol=1e-10, atol=1e-12)
        assert policy.projector.count == plugin.exp_count

    def test_off_is_the_published_behaviour(self):
        got, expected, _, _ = run_passes(
            np.random.default_rng(1), 1, 3, dim=4, classes=2, reference_name="module.weight", projection="off"
        )
        for g, e in zip(got, expected, strict=True):
            assert np.array_equal(g, e)

    def test_rls_projection_has_the_scalar_denominator(self):
        projector = HeadProjector("rls")
        rng = np.random.default_rng(2)
        assert projector.step(rng.normal(size=(4, 3)), batch_index=0, n_batches=2) is None
        features = rng.normal(size=(4, 3))
        p = projector.step(features, batch_index=1, n_batches=2)
        r = features.mean(axis=0)[:, None]
        alpha = 0.1 ** (1 / 2 + 1)
        k = r  # P was the identity
        expected = np.eye(3) - (k @ k.T) / (alpha + float((r.T @ k)[0, 0]))
        assert np.allclose(p, expected / np.linalg.norm(expected), rtol=0, atol=1e-14)
        # along the direction just learnt, P shrinks by alpha / (alpha + |r|^2) (before the Frobenius scaling)
        shrink = alpha / (alpha + float((r.T @ r)[0, 0]))
        assert np.allclose(p @ r, shrink * r / np.linalg.norm(expected), rtol=1e-12, atol=0)

    @pytest.mark.parametrize("seed", range(10))
    def test_entropy_fusion_weights_match_calculate_gating_weights(self, seed):
        rng = np.random.default_rng(seed)
        out_a, out_v, out_t = (rng.normal(size=(8, 5)) * s for s in (0.5, 3.0, 1.0))
        weights = entropy_fusion_weights({"audio": out_a, "visual": out_v})
        ref_a, ref_v = reference_gating_weights(out_a, out_v)
        assert weights["audio"] == pytest.approx(ref_a, rel=1e-12)
        assert weights["visual"] == pytest.approx(ref_v, rel=1e-12)
        three = entropy_fusion_weights({"a": out_a, "v": out_v, "t": out_t})
        assert list(three.values()) == pytest.approx(reference_gating_weights(out_a, out_v, out_t), rel=1e-12)
        # valid(): out = out_a * conf_a + out_v * conf_v
        policy = MLA(MODALITIES)
        fused = sum(
            w * {"audio": out_a, "visual": out_v}[m]
            for m, w in policy.fusion_weights({"audio": out_a, "visual": out_v}).items()
        )
        assert np.allclose(fused, out_a * ref_a + out_v * ref_v, rtol=1e-12)

    def test_per_sample_entropy_is_the_commented_alternative(self):
        rng = np.random.default_rng(3)
        out_a, out_v = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) * 4
        per_sample = {m: z - z.max(axis=1, keepdims=True) for m, z in (("a", out_a), ("v", out_v))}
        entropies = {}
        for m, z in per_sample.items():
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            entropies[m] = -np.sum(p * np.log(p))
        top = max(entropies.values())
        raw = {m: np.exp(top - h) for m, h in entropies.items()}
        expected = {m: v / sum(raw.values()) for m, v in raw.items()}
        assert entropy_fusion_weights({"a": out_a, "v": out_v}, axis=1) == pytest.approx(expected, rel=1e-12)

    def test_fixed_fusion_is_av_alpha(self):
        policy = MLA(MODALITIES, fusion="fixed", weights={"audio": 0.55, "visual": 0.45})
        assert policy.fusion_weights({"audio": np.zeros((2, 2)), "visual": np.ones((2, 2))}) == {
            "audio": 0.55,
            "visual": 0.45,
        }


class TestMLAPolicy:
    def test_each_pass_trains_one_modality_through_the_shared_head(self):
        passes = MLA(["a", "b", "c"], projection="code").training_passes(step=3, epoch=1)
        assert [p.modalities for p in passes] == [("a",), ("b",), ("c",)]
        assert all(p.project_shared_head for p in passes)
        assert passes[1].terms == LossTerms(fused=0.0, unimodal={"b": 1.0})
        assert passes[1].terms.combine(unimodal={"b": 0.7}) == 0.7
        assert not any(p.project_shared_head for p in MLA(["a", "b"], projection="off").training_passes())

    def test_the_default_projection_is_off_as_in_the_published_code(self):
        """The reference's projection never fires (its name filter matches no parameter), so by default no
        pass projects the shared head and ``head_projection`` leaves every gradient alone."""
        policy = MLA(["a", "b"])
        assert policy.projection == "off" and policy.get_config()["projection"] == "off"
        for step in range(3):
            passes = policy.training_passes(step=step, epoch=0)
            assert [p.modalities for p in passes] == [("a",), ("b",)]
            assert not any(p.project_shared_head for p in passes)
        features = np.random.default_rng(5).normal(size=(4, 3))
        assert all(policy.head_projection(features, batch_index=i, n_batches=3) is None for i in range(3))
        restored = policy_from_config(policy.get_config())
        assert restored == policy and restored.projection == "off"

    def test_state_round_trips_mid_run(self):
        rng = np.random.default_rng(4)
        policy = MLA(MODALITIES, projection="code")
        for i in range(3):
            policy.head_projection(rng.normal(size=(4, 3)), batch_index=i, n_batches=5)
        restored = policy_from_config(policy.get_config())
        assert restored == policy and isinstance(restored, MLA)
        restored.load_state_dict(policy.state_dict())
        features = rng.normal(size=(4, 3))
        assert np.array_equal(
            restored.head_projection(features, batch_index=3, n_batches=5),
            policy.head_projection(features, batch_index=3, n_batches=5),
        )

    def test_refusals_name_the_problem(self):
        with pytest.raises(ValueError, match="projection"):
            MLA(MODALITIES, projection="on")
        with pytest.raises(ValueError, match="fusion"):
            MLA(MODALITIES, fusion="mean")
        with pytest.raises(ValueError, match="weights"):
            MLA(MODALITIES, weights={"audio": 1.0})
        policy = MLA(MODALITIES, projection="code")
        policy.head_projection(np.zeros((2, 3)), batch_index=0, n_batches=1)
        with pytest.raises(ValueError, match="dim 4"):
            policy.head_projection(np.zeros((2, 4)), batch_index=0, n_batches=1)
        with pytest.raises(ValueError, match="square"):
            policy.load_state_dict({"projector": {"matrix": [[1.0, 0.0]], "count": 1}})
        with pytest.raises(ValueError, match="axis"):
            entropy_fusion_weights({"a": np.zeros((2, 2))}, axis=2)
