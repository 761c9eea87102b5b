"""AGM, MMPareto, InfoReg and ARL in the core: each against a NumPy transcription of its reference code.

The ``reference_*`` functions below follow the official code's per-step pseudo-code (the loops and
branches as written there, on plain arrays), independently of the policies' implementation; the tests
check that the policy + :func:`pdmp.apply_transform` give the same gradients and coefficients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import pdmp
from pdmp.baselines import AGM, ARL, InfoReg, MMPareto, min_norm_weights, mono_modal_responses, shapley_responses
from pdmp.policies import policy_from_config
from pdmp.transforms import (
    GRADIENT_STATISTICS,
    LOGIT_STATISTICS,
    GradientTransform,
    apply_transform,
    gradient_statistics,
    logit_statistics,
)

MODALITIES = ("audio", "visual")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def encoder_grads(rng: np.random.Generator, shapes=((4, 3), (4,), (2, 2, 3))) -> list[np.ndarray]:
    return [rng.normal(size=shape) for shape in shapes]


# -- the generic pieces ---------------------------------------------------------------------------


def test_logit_statistics_are_batch_sums_of_their_definitions():
    rng = np.random.default_rng(0)
    logits = {"audio": rng.normal(size=(5, 3)) * 3, "visual": rng.normal(size=(5, 3))}
    labels = np.array([0, 2, 1, 1, 0])
    stats = logit_statistics(logits, labels)
    for name, z in logits.items():
        p = softmax(z)
        assert stats[name]["count"] == 5
        assert stats[name]["true_prob"] == pytest.approx(p[np.arange(5), labels].sum())
        assert stats[name]["cross_entropy"] == pytest.approx(-np.log(p[np.arange(5), labels]).sum())
        assert stats[name]["entropy"] == pytest.approx(-(p * np.log(p)).sum())
        assert stats[name]["logit_abs"] == pytest.approx(np.abs(z).sum())
        assert set(stats[name]) == set(LOGIT_STATISTICS)


def test_logit_statistics_stay_finite_for_huge_logits():
    stats = logit_statistics({"a": np.array([[1e4, -1e4, 0.0]]), "b": np.zeros((1, 3))}, [1])
    assert stats["a"]["cross_entropy"] == pytest.approx(2e4)
    assert all(math.isfinite(v) for v in stats["a"].values())


def test_gradient_statistics():
    rng = np.random.default_rng(1)
    fused, unimodal = encoder_grads(rng), encoder_grads(rng)
    stats = gradient_statistics(fused, unimodal)
    flat_g = np.concatenate([g.ravel() for g in fused])
    flat_u = np.concatenate([u.ravel() for u in unimodal])
    assert stats["fused_sq"] == pytest.approx(flat_g @ flat_g)
    assert stats["unimodal_sq"] == pytest.approx(flat_u @ flat_u)
    assert stats["dot"] == pytest.approx(flat_g @ flat_u)
    # Fisher: weight tensors only (the 1-D bias is left out), each by its mean square.
    assert stats["fisher"] == pytest.approx((fused[0] ** 2).mean() + (fused[2] ** 2).mean())
    assert set(stats) == set(GRADIENT_STATISTICS)


def test_identity_transform_leaves_gradients_alone_and_arrays_round_trip():
    rng = np.random.default_rng(2)
    fused = encoder_grads(rng)
    identity = GradientTransform(fused={"audio": 1.0})
    for got, want in zip(apply_transform(identity, "audio", fused), fused, strict=True):
        np.testing.assert_array_equal(got, want)
    transform = GradientTransform(
        fused={"a": 2.0, "b": 0.5},
        unimodal={"a": 1.0},
        anchor={"b": 0.3},
        magnitude={"a": 1.5},
        floor_to_sum={"a": True},
    )
    again = GradientTransform.from_array(transform.as_array(["a", "b"]), ["a", "b"])
    assert again.as_array(["a", "b"]).tolist() == transform.as_array(["a", "b"]).tolist()
    assert transform.coefficient("a") == 3.0 and transform.coefficient("b") == 0.5


def test_transform_refuses_missing_inputs():
    transform = GradientTransform(fused={"a": 1.0}, unimodal={"a": 1.0}, anchor={"a": 0.1})
    with pytest.raises(ValueError, match="unimodal gradient"):
        apply_transform(transform, "a", [np.ones(2)])
    with pytest.raises(ValueError, match="anchor"):
        apply_transform(GradientTransform(fused={"a": 1.0}, anchor={"a": 0.1}), "a", [np.ones(2)])


# -- MMPareto -------------------------------------------------------------------------------------


def reference_mmpareto(gm: list[np.ndarray], gu: list[np.ndarray], gamma: float = 1.5) -> list[np.ndarray]:
    """MMPareto_ICML2024 code/MMPareto.py, one encoder: cosine over the flattened encoder, 2-vector
    min-norm solver, per-tensor rescale (transcribed from the reference's loop)."""
    fm = np.concatenate([g.ravel() for g in gm])
    fu = np.concatenate([u.ravel() for u in gu])
    cos = fm @ fu / (np.linalg.norm(fm) * np.linalg.norm(fu))
    if cos > 0:
        k0 = k1 = 0.5
    else:
        v11, v12, v22 = fm @ fm, fm @ fu, fu @ fu
        if v12 >= v11:
            k0 = 0.999
        elif v12 >= v22:
            k0 = 0.001
        else:
            k0 = (v22 - v12) / (v11 + v22 - 2 * v12)
        k1 = 1 - k0
    out = []
    for g, u in zip(gm, gu, strict=True):
        new = 2 * k0 * g + 2 * k1 * u
        s = np.linalg.norm(g + u) / np.linalg.norm(new)
        out.append(gamma * new * (s if s > 1 else 1))
    return out


def mmpareto_step(policy: MMPareto, grads: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]):
    stats = {m: gradient_statistics(g, u) for m, (g, u) in grads.items()}
    transform = policy.transform(step=0, epoch=0, gradient_stats=stats)
    return {m: apply_transform(transform, m, g, u) for m, (g, u) in grads.items()}


@pytest.mark.parametrize("seed", range(6))
def test_mmpareto_matches_reference_when_gradients_agree_or_conflict(seed):
    rng = np.random.default_rng(seed)
    grads = {}
    for index, m in enumerate(MODALITIES):
        g = encoder_grads(rng)
        # audio: a unimodal gradient pointing against the fused one (conflict); visual: along it (agree).
        u = [(-1.0 if index == 0 else 1.0) * x + 0.3 * rng.normal(size=x.shape) for x in g]
        grads[m] = (g, u)
    got = mmpareto_step(MMPareto(MODALITIES), grads)
    for m, (g, u) in grads.items():
        for a, b in zip(got[m], reference_mmpareto(g, u), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    stats = {m: gradient_statistics(*grads[m]) for m in MODALITIES}
    assert stats["audio"]["dot"] < 0 < stats["visual"]["dot"]  # both branches were exercised


def test_mmpareto_agreement_is_one_and_a_half_times_the_sum():
    g, u = [np.array([1.0, 2.0])], [np.array([0.5, 1.0])]
    out = mmpareto_step(MMPareto(["a", "b"]), {"a": (g, u), "b": (g, u)})["a"]
    np.testing.assert_allclose(out[0], 1.5 * (g[0] + u[0]))


def test_mmpareto_min_norm_weights_minimise_the_norm():
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.normal(size=5), rng.normal(size=5)
        k, rest = min_norm_weights(a @ a, a @ b, b @ b)
        assert k + rest == pytest.approx(1.0)
        grid = np.linspace(0, 1, 2001)
        best = min(np.linalg.norm(t * a + (1 - t) * b) for t in grid)
        if 0.001 < k < 0.999:
            assert np.linalg.norm(k * a + rest * b) <= best + 1e-9


def test_mmpareto_zero_combined_gradient_stays_zero():
    # Opposite gradients of equal norm: the min-norm point is 0; the reference divides by it (NaN).
    g, u = [np.array([1.0, -1.0])], [np.array([-1.0, 1.0])]
    out = mmpareto_step(MMPareto(["a", "b"]), {"a": (g, u), "b": (g, u)})["a"]
    np.testing.assert_array_equal(out[0], [0.0, 0.0])


# -- InfoReg --------------------------------------------------------------------------------------


def reference_inforeg(epochs: list[list[dict]], strength: dict[str, float], threshold=0.05, window=10):
    """InfoReg_CVPR2025 main.py @939b2ed: per epoch, k from the zero-padded trace list of the first
    modality; per step, the more confident modality's gradient gets beta * (theta - snapshot).
    Each step is {"scores": {m: s_m}, "fisher": {m: ...}}; returns the beta of each step."""
    traces = [0.0] * window
    betas = []
    for e, steps in enumerate(epochs):
        if e == 0:
            k = 1.0
        else:
            tr1 = sum(traces[-window:]) / window
            tr2 = sum(traces[-window - 1 : -1]) / window
            k = (tr1 - tr2) / tr1
        total = 0.0
        for step in steps:
            s_a, s_v = step["scores"]["audio"], step["scores"]["visual"]
            beta = {"audio": 0.0, "visual": 0.0}
            if s_a > s_v and k > threshold:
                beta["audio"] = strength["audio"] * math.exp(math.tanh(s_a - s_v))
            elif s_a < s_v and k > threshold:
                beta["visual"] = strength["visual"] * math.exp(math.tanh(s_v - s_a))
            betas.append(beta)
            total += step["fisher"]["audio"]
        traces.append(total)
    return betas


def test_inforeg_matches_reference_over_epochs_and_closes_its_window():
    rng = np.random.default_rng(4)
    strength = {"audio": 0.95, "visual": 0.1}
    epochs = []
    for e in range(16):
        # Traces grow over the first epochs, then flatten: the window must close at some epoch.
        level = min(e, 6) + 1.0
        epochs.append(
            [
                {
                    "scores": {"audio": float(rng.uniform(5, 40)), "visual": float(rng.uniform(5, 40))},
                    "fisher": {"audio": level * float(rng.uniform(0.9, 1.1)), "visual": 1.0},
                }
                for _ in range(5)
            ]
        )
    policy = InfoReg(MODALITIES, strength)
    got, step = [], 0
    for e, steps in enumerate(epochs):
        for record in steps:
            logit_stats = {
                m: dict.fromkeys(LOGIT_STATISTICS, 1.0) | {"true_prob": record["scores"][m]} for m in MODALITIES
            }
            grad_stats = {
                m: dict.fromkeys(GRADIENT_STATISTICS, 0.0) | {"fisher": record["fisher"][m]} for m in MODALITIES
            }
            transform = policy.transform(step=step, epoch=e, logit_stats=logit_stats, gradient_stats=grad_stats)
            got.append({m: transform.get("anchor", m) for m in MODALITIES})
            step += 1
    want = reference_inforeg(epochs, strength)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-12, abs=0)
    assert any(b["audio"] or b["visual"] for b in want[:5]) and not any(b["audio"] or b["visual"] for b in want[-5:])


def test_inforeg_pull_brings_parameters_back_to_the_anchor():
    transform = GradientTransform(fused={"a": 1.0}, anchor={"a": 2.0})
    theta, anchor, g = np.array([1.0, 3.0]), np.array([0.0, 3.0]), np.array([0.1, 0.1])
    out = apply_transform(transform, "a", [g], params=[theta], anchors=[anchor])[0]
    np.testing.assert_allclose(out, g + 2.0 * (theta - anchor))  # the gradient of (beta/2)||theta - anchor||^2


def test_inforeg_state_round_trips_exactly():
    policy = InfoReg(MODALITIES)
    stats = {m: dict.fromkeys(LOGIT_STATISTICS, 3.0) for m in MODALITIES}
    grads = {m: dict.fromkeys(GRADIENT_STATISTICS, 0.5) for m in MODALITIES}
    for e in range(3):
        for s in range(4):
            policy.transform(step=4 * e + s, epoch=e, logit_stats=stats, gradient_stats=grads)
    twin = policy_from_config(policy.get_config())
    twin.load_state_dict(policy.state_dict())
    assert twin.state_dict() == policy.state_dict() and twin == policy
    with pytest.raises(ValueError, match="history"):
        twin.load_state_dict({**policy.state_dict(), "history": [0.0]})
    assert twin.state_dict() == policy.state_dict()  # a refused state changes nothing


# -- AGM ------------------------------------------------------------------------------------------


def reference_agm(batches: list[dict[str, float]], alpha: float = 1.0, clip: float = 10.0) -> list[dict[str, float]]:
    """AGM_ICCV2023 run/CREMAD_main.py: per-step coefficients from the mean cross-entropies s_m."""
    modalities = list(batches[0])
    count = len(modalities)
    running = dict.fromkeys(modalities, 0.0)
    out = []
    for t, s in enumerate(batches, start=1):
        k = count / (count - 1)
        s_bar, r_bar = np.mean(list(s.values())), np.mean(list(running.values()))
        ratio = {m: math.exp(k * (s_bar - s[m])) for m in modalities}
        optimal = {m: math.exp(k * (r_bar - running[m])) for m in modalities}
        out.append({m: math.exp(alpha * min(optimal[m] - ratio[m], clip)) for m in modalities})
        for m in modalities:
            running[m] = running[m] * (t - 1) / t + s[m] / t
    return out


@pytest.mark.parametrize("names", [MODALITIES, ("a", "v", "t")])
def test_agm_matches_reference(names):
    rng = np.random.default_rng(5)
    policy = AGM(names, alpha=2.5)
    batches, got = [], []
    for step in range(30):
        logits = {m: rng.normal(size=(8, 4)) * (1 + i) for i, m in enumerate(names)}
        labels = rng.integers(0, 4, size=8)
        stats = logit_statistics(logits, labels)
        batches.append({m: stats[m]["cross_entropy"] / 8 for m in names})
        got.append(policy.transform(step=step, epoch=0, logit_stats=stats).fused)
    for a, b in zip(got, reference_agm(batches, alpha=2.5), strict=True):
        assert a == pytest.approx(b, rel=1e-12)


def test_agm_is_one_outside_its_window_but_keeps_learning():
    policy = AGM(MODALITIES, start_epoch=1, end_epoch=1)
    stats = {"audio": {**dict.fromkeys(LOGIT_STATISTICS, 1.0), "cross_entropy": 8.0, "count": 8.0},
             "visual": {**dict.fromkeys(LOGIT_STATISTICS, 1.0), "cross_entropy": 2.0, "count": 8.0}}  # fmt: skip
    assert policy.transform(step=0, epoch=0, logit_stats=stats).fused == {"audio": 1.0, "visual": 1.0}
    assert policy.steps == 1 and policy.state_dict()["running"] == {"audio": 1.0, "visual": 0.25}
    # The same batch again matches the running means: ratio == optimum, so 1 (the rule's fixed point).
    assert policy.transform(step=1, epoch=1, logit_stats=stats).fused == pytest.approx({"audio": 1.0, "visual": 1.0})
    swapped = {"audio": stats["visual"], "visual": stats["audio"]}  # audio now does better than before
    inside = policy.transform(step=2, epoch=1, logit_stats=swapped).fused
    assert inside["audio"] < 1.0 < inside["visual"]


def test_shapley_responses_sum_to_the_full_output():
    rng = np.random.default_rng(6)
    names = ("a", "b", "c")
    inputs = {m: rng.normal(size=(3, 2)) for m in names}
    weights = {m: rng.normal(size=(2, 4)) for m in names}

    def forward(x):  # a model with an interaction term, so the responses are not trivially separable
        return sum(x[m] @ weights[m] for m in names) + 0.5 * (x["a"] * x["b"]).sum(axis=1, keepdims=True)

    responses = mono_modal_responses(forward, inputs)
    np.testing.assert_allclose(sum(responses.values()), forward(inputs), atol=1e-12)
    # Two modalities: phi_a = (f(a, v) - f(v) + f(a)) / 2, the reference's CREMAD_net formula.
    outputs = {("a",): np.array([1.0]), ("v",): np.array([2.0]), ("a", "v"): np.array([7.0])}
    phi = shapley_responses(outputs, ["a", "v"])
    assert phi["a"].tolist() == [3.0] and phi["v"].tolist() == [4.0]


def test_shapley_responses_refuse_missing_or_unknown_subsets():
    with pytest.raises(ValueError, match=r"lacks the masked outputs of \[\['v'\]\]"):
        shapley_responses({("a",): 1.0, ("a", "v"): 2.0}, ["a", "v"])
    with pytest.raises(ValueError, match="unknown: \\['x'\\]"):
        shapley_responses({("a",): 1.0, ("v",): 1.0, ("a", "v"): 2.0, ("x",): 1.0}, ["a", "v"])


# -- ARL ------------------------------------------------------------------------------------------


def reference_arl_weights(z_a: np.ndarray, z_v: np.ndarray, temperature: float) -> tuple[float, float]:
    """ICCV2025-ARL main_arl_variance.py L116-153 (the paper's rule): the cross term d_v q_a, d_a q_v."""
    d_a, d_v = np.abs(z_a).sum(axis=1).mean(), np.abs(z_v).sum(axis=1).mean()
    d_a, d_v = d_a / (d_a + d_v), d_v / (d_a + d_v)
    p_a, p_v = softmax(z_a), softmax(z_v)
    h_a = (-(p_a * np.log(p_a + 1e-16)).sum(axis=1)).mean()
    h_v = (-(p_v * np.log(p_v + 1e-16)).sum(axis=1)).mean()
    h_a, h_v = h_a / (h_a + h_v), h_v / (h_a + h_v)
    h_a, h_v = max(h_a, 0.3), max(h_v, 0.3)
    q_a, q_v = 1 / h_a, 1 / h_v
    q_a, q_v = q_a / (q_a + q_v), q_v / (q_a + q_v)
    w = softmax(temperature * np.array([d_v * q_a, d_a * q_v]))
    return float(w[0]), float(w[1])


@pytest.mark.parametrize("seed", range(5))
def test_arl_matches_reference(seed):
    rng = np.random.default_rng(seed)
    z_a, z_v = rng.normal(size=(16, 6)) * 4, rng.normal(size=(16, 6))
    labels = rng.integers(0, 6, size=16)
    stats = logit_statistics({"audio": z_a, "visual": z_v}, labels)
    policy = ARL(MODALITIES, temperature=8.0)
    w_a, w_v = reference_arl_weights(z_a, z_v, 8.0)
    assert policy.transform(step=0, epoch=6, logit_stats=stats).fused == pytest.approx(
        {"audio": 1 + w_a, "visual": 1 + w_v}, rel=1e-9
    )
    assert policy.transform(step=0, epoch=5, logit_stats=stats).fused == {"audio": 1.0, "visual": 1.0}
    assert policy.auxiliary_weight(5) == 1.0 and policy.auxiliary_weight(6) == 4.0
    assert policy.unimodal_loss_weight(6) == 4.0 and MMPareto(MODALITIES).unimodal_loss_weight(6) == 1.0


# -- shared behaviour -----------------------------------------------------------------------------

ALL = [
    MMPareto(MODALITIES),
    InfoReg(MODALITIES, {"audio": 0.95, "visual": 0.1}),
    AGM(MODALITIES, alpha=2.5),
    ARL(MODALITIES, temperature=8.0, gamma=3.0),
]


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.kind)
def test_configs_round_trip_and_declare_needs(policy):
    assert policy_from_config(policy.get_config()) == policy
    assert policy.uses_logits or policy.uses_unimodal_gradients or policy.uses_gradient_stats
    assert isinstance(policy, pdmp.GradientPolicy)
    assert policy.coefficients() == dict.fromkeys(MODALITIES, 1.0)  # before any step: nothing applied


@pytest.mark.parametrize("policy", ALL, ids=lambda p: p.kind)
def test_missing_or_bad_statistics_are_refused(policy):
    fresh = policy_from_config(policy.get_config())
    needs_logits, needs_grads = fresh.uses_logits, fresh.uses_gradient_stats
    good_logits = {m: dict.fromkeys(LOGIT_STATISTICS, 2.0) for m in MODALITIES}
    good_grads = {m: dict.fromkeys(GRADIENT_STATISTICS, 1.0) for m in MODALITIES}
    before = fresh.state_dict()
    if needs_logits:
        with pytest.raises(ValueError, match="logit_stats: this policy needs them"):
            fresh.transform(step=0, epoch=0, gradient_stats=good_grads)
        bad = {**good_logits, "visual": {**good_logits["visual"], "true_prob": float("nan")}}
        with pytest.raises(ValueError, match=r"non-finite.*'true_prob'"):
            fresh.transform(step=0, epoch=0, logit_stats=bad, gradient_stats=good_grads)
        with pytest.raises(ValueError, match="video"):
            renamed = {"audio": good_logits["audio"], "video": good_logits["visual"]}
            fresh.transform(step=0, epoch=0, logit_stats=renamed, gradient_stats=good_grads)
    if needs_grads:
        with pytest.raises(ValueError, match="gradient_stats: this policy needs them"):
            fresh.transform(step=0, epoch=0, logit_stats=good_logits)
        with pytest.raises(ValueError, match="lacks \\['fisher'\\]"):
            partial = {m: {k: v for k, v in row.items() if k != "fisher"} for m, row in good_grads.items()}
            fresh.transform(step=0, epoch=0, logit_stats=good_logits, gradient_stats=partial)
    assert fresh.state_dict() == before  # a refused step learns nothing


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: MMPareto(MODALITIES, gamma=0), "gamma"),
        (lambda: InfoReg(MODALITIES, {"audio": 0.9}), "strength"),
        (lambda: InfoReg(MODALITIES, window_modality="video"), "video"),
        (lambda: InfoReg(MODALITIES, window=0), "window"),
        (lambda: AGM(MODALITIES, start_epoch=3, end_epoch=1), "end_epoch"),
        (lambda: AGM(MODALITIES, alpha=float("nan")), "alpha"),
        (lambda: ARL(MODALITIES, temperature=-1.0), "temperature"),
    ],
)
def test_bad_options_are_refused(build, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_agm_saturates_instead_of_overflowing_when_losses_are_far_apart():
    # Mean cross-entropies 400 nats apart (huge logits): exp(2 * 400) overflows a float.
    policy = AGM(MODALITIES)
    stats = {"audio": {**dict.fromkeys(LOGIT_STATISTICS, 1.0), "cross_entropy": 0.0, "count": 1.0},
             "visual": {**dict.fromkeys(LOGIT_STATISTICS, 1.0), "cross_entropy": 400.0, "count": 1.0}}  # fmt: skip
    first = policy.transform(step=0, epoch=0, logit_stats=stats).fused
    # audio: ratio exp(400) (capped) far above its optimum 1 -> 0; visual: ratio ~0, optimum 1 -> e.
    assert first["audio"] == 0.0 and first["visual"] == pytest.approx(math.e)
    second = policy.transform(step=1, epoch=0, logit_stats=stats).fused
    assert all(math.isfinite(v) for v in second.values())


# -- capability flags ---------------------------------------------------------------------------------

#: Shipped policy kinds -> (a factory, needs_logits, uses_unimodal_losses).
SHIPPED_FLAGS = {
    "NoModulation": (lambda: pdmp.NoModulation(MODALITIES), False, False),
    "PDMP": (lambda: pdmp.PDMP(MODALITIES, "audio"), False, False),
    "OGMGE": (lambda: pdmp.OGMGE(MODALITIES), True, False),
    "UniformScaling": (lambda: pdmp.UniformScaling(MODALITIES), False, False),
    "InversePDMP": (lambda: pdmp.InversePDMP(MODALITIES, "visual"), False, False),
    "AdaptivePDMP": (lambda: pdmp.AdaptivePDMP(MODALITIES, {"audio": 0.8, "visual": 0.5}), False, False),
    "AGM": (lambda: AGM(MODALITIES), True, False),
    "ARL": (lambda: ARL(MODALITIES), True, True),
    "InfoReg": (lambda: InfoReg(MODALITIES), True, True),
    "MMPareto": (lambda: MMPareto(MODALITIES), False, True),
}


def test_capability_flags_say_what_every_shipped_policy_needs() -> None:
    """A training loop that branches on ``needs_logits`` / ``uses_unimodal_losses`` must wire what the policy
    uses: ARL and InfoReg need per-modality logits and add unimodal losses (both flags were False)."""
    from pdmp.policies import POLICIES

    for kind, cls in POLICIES.items():  # every registered class, including ones this table does not list
        if issubclass(cls, pdmp.GradientPolicy):
            assert cls.needs_logits == cls.uses_logits, kind
            assert cls.uses_unimodal_losses or not cls.uses_unimodal_gradients, kind
    auxiliary = pdmp.AdaptivePDMP(MODALITIES, {"audio": 0.8, "visual": 0.5}, auxiliary=1.0)
    assert not auxiliary.needs_logits and auxiliary.uses_unimodal_losses and auxiliary.observes_scores
    for kind, (factory, needs_logits, uses_losses) in SHIPPED_FLAGS.items():
        policy = factory()
        assert (policy.needs_logits, policy.uses_unimodal_losses) == (needs_logits, uses_losses), kind
        weights = [w for epoch in range(12) for w in policy.unimodal_loss_weights(step=0, epoch=epoch).values()]
        if kind != "AdaptivePDMP":  # its weights move with the observed shares (0 until it has seen any)
            assert any(w > 0 for w in weights) == uses_losses, f"{kind}: unimodal loss weights {set(weights)}"
        if isinstance(policy, pdmp.GradientPolicy):
            # The generic flags follow the specific ones.
            assert policy.needs_logits == policy.uses_logits, kind
            assert policy.uses_unimodal_losses or not policy.uses_unimodal_gradients, kind


def test_capability_flags_of_a_custom_gradient_policy_follow_its_declarations() -> None:
    class Reads(pdmp.GradientPolicy):
        kind = "TestReadsLogits"
        uses_logits = True

        def compute_transform(self, **_: object) -> GradientTransform:  # type: ignore[override]
            return GradientTransform(fused=self._all(1.0))

        def get_config(self) -> dict[str, object]:
            return {"type": self.kind, "modalities": list(self.modalities)}

    class Combines(Reads):
        kind = "TestCombines"
        uses_logits = False
        uses_unimodal_gradients = True

    assert Reads(MODALITIES).needs_logits and not Reads(MODALITIES).uses_unimodal_losses
    assert Reads(MODALITIES).unimodal_loss_weights() == {"audio": 0.0, "visual": 0.0}
    assert not Combines(MODALITIES).needs_logits and Combines(MODALITIES).uses_unimodal_losses
    assert Combines(MODALITIES).unimodal_loss_weights() == {"audio": 1.0, "visual": 1.0}


def reference_agm_modulated_epochs(epochs: int, modulation_starts: int = 0, modulation_ends: int = 20) -> list[int]:
    """The epochs the AGM reference modulates (run/CREMAD_main.py, commit 5a65542): its loop is
    ``for epoch in range(start_epoch, cfgs.EPOCHS + 1)`` with ``start_epoch = 1``, and train() modulates while
    ``cfgs.modulation_starts <= epoch <= cfgs.modulation_ends`` (utils/config.py: defaults 0 and 20)."""
    return [epoch for epoch in range(1, epochs + 1) if modulation_starts <= epoch <= modulation_ends]


def _agm_modulated_epochs(policy: AGM, epochs: int) -> list[int]:
    """The epochs (counted from 0) whose transform is not the identity, from one step per epoch."""
    moved = []
    for epoch in range(epochs):
        # The audio loss rises every step, so it always stands worse than its history: coefficients != 1.
        stats = {m: {**dict.fromkeys(LOGIT_STATISTICS, 1.0), "count": 4.0} for m in MODALITIES}
        stats["audio"]["cross_entropy"] = 4.0 * (0.1 + 0.05 * epoch)
        stats["visual"]["cross_entropy"] = 4.0 * 2.0
        transform = policy.transform(step=epoch, epoch=epoch, logit_stats=stats)
        if any(transform.get("fused", m) != 1.0 for m in MODALITIES):
            moved.append(epoch)
    return moved


@pytest.mark.parametrize(("starts", "ends"), [(0, 20), (1, 20), (5, 12), (3, 3)])
def test_agm_window_has_the_reference_epoch_count(starts: int, ends: int) -> None:
    """The reference counts epochs from 1, this library from 0: the default window (0, 19) is the reference's
    default (0, 20), its first 20 epochs (it was (0, 20): 21 epochs), and a window translates as documented."""
    epochs = 40
    reference = reference_agm_modulated_epochs(epochs, starts, ends)
    if (starts, ends) == (0, 20):
        policy = AGM(MODALITIES)
        assert (policy.start_epoch, policy.end_epoch) == (0, 19)
    else:
        policy = AGM(MODALITIES, start_epoch=max(starts - 1, 0), end_epoch=ends - 1)
    ours = _agm_modulated_epochs(policy, epochs)
    assert len(ours) == len(reference) == (20 if (starts, ends) in ((0, 20), (1, 20)) else len(reference))
    assert ours == [epoch - 1 for epoch in reference]  # our epoch e is the reference's epoch e + 1
