"""PMR in the core (pdmp.rebalancing.PMR, prototype_logits) against NumPy transcriptions of its reference code.

``reference_step_loss`` follows fanyunfeng-bit/Modal-Imbalance-PMR ``main_Prototype_grad.py``, ``train_epoch``
(``EU_dist``, the score sums, ``ratio_a_p`` and the ``beta``/``lam`` branches, the loss), and
``reference_prototypes`` its ``calculate_prototype`` (commit 3615e48); ``reference_paper_loss`` follows
GeWu-Lab/BalanceBenchmark ``balancemm/trainer/PMR_trainer.py``, ``training_step`` (the clipped coefficients
and the prototypical entropy regulariser; commit 4c1482f). Loops and branches as written there, on arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

from pdmp.policies import policy_from_config
from pdmp.rebalancing import PMR, LossTerms, prototype_logits

MODALITIES = ("audio", "visual")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(softmax(logits)[np.arange(len(labels)), labels]).mean())


def entropy_sum(logits: np.ndarray) -> float:
    p = softmax(logits)
    return float(-(p * np.log(p)).sum(axis=1).sum())


def reference_eu_dist(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    d = np.zeros((x1.shape[0], x2.shape[0]))
    for i in range(x1.shape[0]):
        for j in range(x2.shape[0]):
            d[i, j] = np.sqrt(np.dot(x1[i] - x2[j], x1[i] - x2[j]))
    return d


def reference_step_loss(a, v, out, label, audio_proto, visual_proto, alpha, epoch, starts, ends):
    """``train_epoch``'s loss for one batch (``--modulation Proto``)."""
    audio_sim = -reference_eu_dist(a, audio_proto)
    visual_sim = -reference_eu_dist(v, visual_proto)
    if starts <= epoch <= ends:
        score_a_p = sum([softmax(audio_sim)[i][label[i]] for i in range(audio_sim.shape[0])])
        score_v_p = sum([softmax(visual_sim)[i][label[i]] for i in range(visual_sim.shape[0])])
        ratio_a_p = score_a_p / score_v_p
        loss_proto_a = cross_entropy(audio_sim, label)
        loss_proto_v = cross_entropy(visual_sim, label)
        if ratio_a_p > 1:
            beta = 0
            lam = 1 * alpha
        elif ratio_a_p < 1:
            beta = 1 * alpha
            lam = 0
        else:
            beta = 0
            lam = 0
        return cross_entropy(out, label) + beta * loss_proto_a + lam * loss_proto_v
    return cross_entropy(out, label)


def reference_prototypes(batches, n_classes, dim, epoch, momentum_coef, a_proto=None, v_proto=None):
    """``calculate_prototype`` (train loader, not AVE): sums over the first ``len // 10`` batches, class means,
    momentum from epoch 1 on."""
    audio_prototypes = np.zeros((n_classes, dim))
    visual_prototypes = np.zeros((n_classes, dim))
    count_class = [0 for _ in range(n_classes)]
    all_num = len(batches)
    for sample_count, (a, v, label) in enumerate(batches, start=1):
        for c, lab in enumerate(label):
            count_class[lab] += 1
            audio_prototypes[lab, :] += a[c, :]
            visual_prototypes[lab, :] += v[c, :]
        if sample_count >= all_num // 10:
            break
    with np.errstate(invalid="ignore", divide="ignore"):
        for c in range(audio_prototypes.shape[0]):
            audio_prototypes[c, :] /= count_class[c]
            visual_prototypes[c, :] /= count_class[c]
    if epoch <= 0:
        return audio_prototypes, visual_prototypes
    return (
        (1 - momentum_coef) * audio_prototypes + momentum_coef * a_proto,
        (1 - momentum_coef) * visual_prototypes + momentum_coef * v_proto,
    )


def reference_paper_loss(m, out, label, proto, alpha, mu, epoch, starts, ends, norm_epoch):
    """BalanceBenchmark's two-modality ``training_step`` loss (``unimodal`` losses decide PER's features)."""
    key = list(m)

    def clip(a, b, c):
        if b < a:
            return a
        if c < b:
            return c
        return b

    if not starts <= epoch <= ends:
        return cross_entropy(out, label)
    sim = {k: -reference_eu_dist(m[k], proto[k]) for k in key}
    score_p = {k: sum([softmax(sim[k])[i][label[i]] for i in range(sim[k].shape[0])]) for k in key}
    ratio_a_p = score_p[key[0]] / score_p[key[1]]
    loss_proto = {k: cross_entropy(sim[k], label) for k in key}
    if ratio_a_p >= 1:
        beta = 0
        lam = 1 * clip(0, ratio_a_p - 1, 1)
    else:
        beta = 1 * clip(0, 1 / ratio_a_p - 1, 1)
        lam = 0
    loss = cross_entropy(out, label) + alpha * beta * loss_proto[key[0]] + alpha * lam * loss_proto[key[1]]
    if epoch <= starts + norm_epoch:
        # The reference takes PER from the features of the modality with the lower unimodal loss; the
        # batches here are built so that this is the dominant one, whose own entropy the core uses.
        per = {k: entropy_sum(sim[k]) for k in key}
        loss = loss - mu * lam * per[key[0]] - mu * beta * per[key[1]]
    return loss


def batch(rng, n=12, n_classes=4, dims=(5, 3), spread=(0.3, 2.0)):
    """Features near per-class centres; ``spread`` per modality (small = well clustered = dominant)."""
    label = np.arange(n) % n_classes
    rng.shuffle(label)
    centres = [rng.normal(size=(n_classes, d)) * 2 for d in dims]
    a = centres[0][label] + rng.normal(size=(n, dims[0])) * spread[0]
    v = centres[1][label] + rng.normal(size=(n, dims[1])) * spread[1]
    return a, v, label, centres


def core_loss(policy, a, v, out, label, protos, epoch):
    logits = {"audio": prototype_logits(a, protos["audio"]), "visual": prototype_logits(v, protos["visual"])}
    terms = policy.loss_terms(step=0, epoch=epoch, prototype_logits=logits, labels=label)
    return terms.combine(
        cross_entropy(out, label),
        prototype={k: cross_entropy(z, label) for k, z in logits.items()},
        prototype_entropy={k: entropy_sum(z) / len(label) for k, z in logits.items()},
    )


class TestPMRAgainstReference:
    """Departures (also in PMR's docstring): the entropy regulariser is not in the published code (off by
    default; its ``"paper"`` form follows BalanceBenchmark, with the batch mean of the entropy where
    BalanceBenchmark sums over the batch, so the tests pass ``entropy_weight = mu * batch size``, and the
    dominant modality's own features where BalanceBenchmark takes the lower-unimodal-loss modality's);
    with more than two modalities each is compared with the mean of the others; a class absent from the
    prototype batches keeps its old prototype (the reference gets NaN); float64 prototypes."""

    def test_prototype_logits_are_the_negative_euclidean_distances(self):
        rng = np.random.default_rng(0)
        z, c = rng.normal(size=(7, 4)), rng.normal(size=(3, 4))
        assert np.allclose(prototype_logits(z, c), -reference_eu_dist(z, c), rtol=0, atol=1e-12)

    @pytest.mark.parametrize("seed", range(12))
    def test_official_step_loss_matches(self, seed):
        rng = np.random.default_rng(seed)
        spread = (0.3, 2.0) if seed % 2 else (2.0, 0.3)  # either modality dominant
        a, v, label, centres = batch(rng, spread=spread)
        protos = {"audio": centres[0] + rng.normal(size=centres[0].shape) * 0.1, "visual": centres[1]}
        out = rng.normal(size=(len(label), 4))
        policy = PMR(MODALITIES, alpha=2.0, end_epoch=70)
        for epoch in (0, 35, 70, 71):
            expected = reference_step_loss(a, v, out, label, protos["audio"], protos["visual"], 2.0, epoch, 0, 70)
            assert core_loss(policy, a, v, out, label, protos, epoch) == pytest.approx(expected, rel=1e-12)

    def test_official_weights_name_the_slow_learner_and_zero_at_a_tie(self):
        policy = PMR(MODALITIES, alpha=2.0)
        label = np.array([0, 1])
        equal = {"audio": np.array([[1.0, 0.0], [0.0, 1.0]]), "visual": np.array([[1.0, 0.0], [0.0, 1.0]])}
        assert policy.loss_terms(prototype_logits=equal, labels=label).prototype == {"audio": 0.0, "visual": 0.0}
        visual_worse = {"audio": equal["audio"], "visual": np.zeros((2, 2))}
        assert policy.loss_terms(prototype_logits=visual_worse, labels=label).prototype == {"audio": 0.0, "visual": 2.0}
        assert policy.loss_terms(epoch=101, prototype_logits=visual_worse, labels=label) == LossTerms()

    @pytest.mark.parametrize("seed", range(8))
    def test_paper_rule_and_entropy_regulariser_match_balancebenchmark(self, seed):
        rng = np.random.default_rng(100 + seed)
        spread = (0.3, 1.5) if seed % 2 else (1.5, 0.3)
        a, v, label, centres = batch(rng, spread=spread)
        protos = {"audio": centres[0], "visual": centres[1]}
        out = rng.normal(size=(len(label), 4))
        alpha, mu, norm_epoch = 0.6, 0.05, 10
        policy = PMR(
            MODALITIES,
            alpha=alpha,
            rule="paper",
            end_epoch=80,
            entropy_weight=mu * len(label),
            entropy_end_epoch=norm_epoch,
        )
        for epoch in (0, 10, 11, 80, 81):
            expected = reference_paper_loss(
                {"audio": a, "visual": v}, out, label, protos, alpha, mu, epoch, 0, 80, norm_epoch
            )
            assert core_loss(policy, a, v, out, label, protos, epoch) == pytest.approx(expected, rel=1e-11)

    @pytest.mark.parametrize("momentum", [0.0, 0.2])
    def test_prototypes_match_calculate_prototype_over_epochs(self, momentum):
        rng = np.random.default_rng(7)
        n_classes, embed_dim, n_batches = 4, 5, 25
        policy = PMR(MODALITIES, momentum=momentum)
        ref_a = ref_v = None
        for epoch in (0, 0, 1, 2):  # before training, then after epochs 0, 1 and 2, as the reference's main calls it
            batches = []
            for _ in range(n_batches):
                label = rng.integers(0, n_classes, size=8)
                label[:n_classes] = np.arange(n_classes)  # every class in every batch
                batches.append((rng.normal(size=(8, embed_dim)), rng.normal(size=(8, embed_dim)), label))
            ref_a, ref_v = reference_prototypes(batches, n_classes, embed_dim, epoch, momentum, ref_a, ref_v)
            for a, v, label in batches[: policy.prototype_batches(n_batches)]:
                policy.accumulate({"audio": a, "visual": v}, label, num_classes=n_classes)
            protos = policy.close_prototypes(epoch)
            assert np.allclose(protos["audio"], ref_a, rtol=0, atol=1e-12)
            assert np.allclose(protos["visual"], ref_v, rtol=0, atol=1e-12)

    def test_a_class_absent_from_the_prototype_batches_keeps_its_prototype(self):
        policy = PMR(MODALITIES, momentum=0.0)
        label = np.array([0, 1, 2])
        policy.accumulate({"audio": np.eye(3), "visual": np.eye(3)}, label, num_classes=3)
        before = policy.close_prototypes(0)
        policy.accumulate({"audio": np.ones((2, 3)), "visual": np.ones((2, 3))}, [0, 1], num_classes=3)
        after = policy.close_prototypes(1)
        assert np.array_equal(after["audio"][2], before["audio"][2])
        assert np.array_equal(after["audio"][0], np.ones(3))
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = reference_prototypes([(np.ones((2, 3)), np.ones((2, 3)), [0, 1])], 3, 3, 0, 0.0)[0]
        assert np.isnan(ref[2]).all()  # the reference's 0 / 0

    def test_prototype_batches_follow_the_reference_break(self):
        policy = PMR(MODALITIES)
        for n in (1, 5, 9, 10, 25, 100):
            used = reference_used_batches(n)
            assert policy.prototype_batches(n) == used


def reference_used_batches(all_num: int) -> int:
    sample_count = 0
    for _ in range(all_num):
        sample_count += 1
        if sample_count >= all_num // 10:
            break
    return sample_count


class TestPMRPolicy:
    def test_three_modalities_compare_each_with_the_mean_of_the_others(self):
        policy = PMR(["a", "b", "c"], alpha=1.0, rule="paper")
        scores = {"a": 3.0, "b": 2.0, "c": 1.0}
        assert policy.weaker(scores) == {"a": False, "b": False, "c": True}
        assert policy.boosts(scores)["c"] == pytest.approx(min(2.5 / 1.0 - 1.0, 1.0))

    def test_state_round_trips_with_prototypes_and_open_sums(self):
        rng = np.random.default_rng(3)
        policy = PMR(MODALITIES, alpha=2.0, momentum=0.5)
        policy.accumulate(
            {"audio": rng.normal(size=(4, 3)), "visual": rng.normal(size=(4, 2))}, [0, 1, 0, 1], num_classes=2
        )
        policy.close_prototypes(0)
        feats = {"audio": rng.normal(size=(4, 3)), "visual": rng.normal(size=(4, 2))}
        policy.accumulate(feats, [1, 1, 0, 0], num_classes=2)
        restored = policy_from_config(policy.get_config())
        assert restored == policy and isinstance(restored, PMR)
        restored.load_state_dict(policy.state_dict())
        a, b = policy.close_prototypes(1), restored.close_prototypes(1)
        for m in MODALITIES:
            assert np.array_equal(a[m], b[m])

    def test_refusals_name_the_problem(self):
        with pytest.raises(ValueError, match="entropy_end_epoch"):
            PMR(MODALITIES, entropy_weight=0.1)
        with pytest.raises(ValueError, match="rule"):
            PMR(MODALITIES, rule="mine")
        with pytest.raises(ValueError, match="momentum"):
            PMR(MODALITIES, momentum=1.5)
        policy = PMR(MODALITIES)
        with pytest.raises(RuntimeError, match="no prototypes"):
            policy.prototypes()
        with pytest.raises(ValueError, match="prototype logits"):
            policy.loss_terms(epoch=0)
        with pytest.raises(ValueError, match="features\\['visual'\\]"):
            policy.accumulate({"audio": np.zeros((2, 3)), "visual": np.zeros((3, 3))}, [0, 1], num_classes=2)
        with pytest.raises(ValueError, match="unknown key"):
            policy.load_state_dict({"prototypes": None, "sums": {}, "counts": None, "x": 0})
