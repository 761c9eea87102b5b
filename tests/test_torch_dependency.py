"""dependency_shares: a fused model's per-modality dependency over a dataset, without a hand-written split."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

import pdmp  # noqa: E402
from pdmp.backends.torch import dependency_shares  # noqa: E402

torch.set_num_threads(1)

N, CLASSES = 50, 3


def data() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, CLASSES, (N,), generator=generator)
    audio = torch.randn(N, 6, generator=generator) + 2.0 * nn.functional.one_hot(y, 6).float()
    image = torch.randn(N, 4, generator=generator)
    return {"audio": audio, "image": image}, y


def encoders() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "audio": nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.5)),
        "image": nn.Sequential(nn.Linear(4, 3), nn.Tanh()),
    }


class Paired(Dataset):  # type: ignore[type-arg]
    """Yields ({"audio": ..., "image": ...}, label): the default collate makes dicts of batches."""

    def __init__(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {name: value[index] for name, value in self.inputs.items()}, self.labels[index]


def by_hand_concat(enc: dict[str, nn.Module], head: nn.Linear, x: dict[str, torch.Tensor], y: torch.Tensor) -> Any:
    with torch.no_grad():
        for module in enc.values():
            module.eval()
        f_a, f_v = enc["audio"](x["audio"]), enc["image"](x["image"])
        w, b = head.weight, head.bias
        logits = {"audio": f_a @ w[:, :5].T + b / 2, "image": f_v @ w[:, 5:].T + b / 2}
        torch.testing.assert_close(logits["audio"] + logits["image"], head(torch.cat([f_a, f_v], dim=1)))
    return pdmp.dependency({k: v.numpy() for k, v in logits.items()}, y.numpy())


def test_concat_equals_a_hand_written_split_over_tensors_and_over_a_loader() -> None:
    x, y = data()
    enc = encoders()
    head = nn.Linear(5 + 3, CLASSES)
    expected = by_hand_concat(encoders(), head, x, y)
    over_tensors = dependency_shares(enc, head, (x, y), batch_size=7)
    over_loader = dependency_shares(enc, head, DataLoader(Paired(x, y), batch_size=16))
    over_arrays = dependency_shares(enc, head, ({k: v.double().numpy() for k, v in x.items()}, y.tolist()))
    for result in (over_tensors, over_loader, over_arrays):
        assert result.mass == pytest.approx(expected.mass, rel=1e-6)
        assert result.share == pytest.approx(expected.share, rel=1e-6)
    assert sum(over_tensors.share.values()) == pytest.approx(1.0)


def test_sum_fusion_equals_a_hand_written_split() -> None:
    x, y = data()
    enc = encoders()
    torch.manual_seed(1)
    heads = nn.ModuleDict({"audio": nn.Linear(5, CLASSES), "image": nn.Linear(3, CLASSES)})
    with torch.no_grad():
        eval_enc = encoders()
        for module in eval_enc.values():
            module.eval()
        logits = {name: heads[name](eval_enc[name](x[name])).numpy() for name in ("audio", "image")}
    expected = pdmp.dependency(logits, y.numpy())
    for source in ((x, y), DataLoader(Paired(x, y), batch_size=9)):
        result = dependency_shares(enc, heads, source, fusion="sum")
        assert result.mass == pytest.approx(expected.mass, rel=1e-6)
        assert result.share == pytest.approx(expected.share, rel=1e-6)


def test_eval_mode_no_grad_and_training_flags_restored() -> None:
    x, y = data()
    enc = encoders()
    head = nn.Linear(8, CLASSES)
    enc["image"].eval()  # mixed flags: each module gets its own back
    enc["audio"][2].eval()
    before = {module: module.training for root in (*enc.values(), head) for module in root.modules()}
    first = dependency_shares(enc, head, (x, y))
    assert dependency_shares(enc, head, (x, y)) == first  # dropout was off: deterministic
    assert {module: module.training for module in before} == before
    assert all(p.grad is None for root in (*enc.values(), head) for p in root.parameters())


def test_training_flags_are_restored_when_a_batch_is_bad() -> None:
    x, _ = data()
    enc = encoders()
    head = nn.Linear(8, CLASSES)
    with pytest.raises(ValueError, match="labels contains class index 7"):
        dependency_shares(enc, head, (x, torch.full((N,), 7)))
    assert all(module.training for root in (*enc.values(), head) for module in root.modules())


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("unknown-modality", ValueError, r"batch 0 inputs: unknown modality\(ies\) \['audoi'\]"),
        ("missing-modality", ValueError, r"batch 0 inputs: missing modality\(ies\) \['image'\]"),
        ("head-width", ValueError, r"batch 0: feature widths \{'audio': 5, 'image': 3\} sum to 8 but head.in_features"),
        ("labels-range", ValueError, r"batch 1: labels contains class index 3 but there are 3 classes"),
        ("labels-count", ValueError, r"inputs have \{'audio': 50, 'image': 50\} samples but labels have 49"),
        ("loader-batch", TypeError, "batch 0 is Tensor; the loader must yield"),
        ("loader-triple", TypeError, "batch 0 is tuple of length 3"),
        ("inputs-not-dict", TypeError, "batch 0: inputs are list"),
        ("encoder-3d", ValueError, r"encoder of 'image' returned \(16, 3, 1\)"),
        ("sum-widths", ValueError, r"the heads output \{'audio': 3, 'image': 4\} logits"),
        ("sum-unknown-head", ValueError, r"dependency_shares head: unknown modality\(ies\) \['imag'\]"),
        ("concat-with-dict", TypeError, r"a dict of heads is fusion='sum'"),
        ("sum-with-linear", TypeError, "fusion='sum' needs head to be a dict of per-modality heads"),
        ("fusion", ValueError, "fusion must be 'concat' or 'sum', got 'film'"),
        ("empty", ValueError, "the data held no samples"),
        ("data-type", TypeError, "data must be a DataLoader yielding"),
        ("encoder-type", TypeError, r"encoders\['image'\] is the class Tanh, not a module; pass an instance"),
        ("one-modality", ValueError, "PDMP needs at least two modalities"),
    ],
)
def test_bad_input_is_named(case: str, error: type[Exception], message: str) -> None:
    x, y = data()
    enc: Any = encoders()
    head: Any = nn.Linear(8, CLASSES)
    source: Any = (x, y)
    fusion = "concat"
    if case == "unknown-modality":
        source = ({"audio": x["audio"], "audoi": x["image"]}, y)
    elif case == "missing-modality":
        source = ({"audio": x["audio"]}, y)
    elif case == "head-width":
        head = nn.Linear(9, CLASSES)
    elif case == "labels-range":
        y = y.clone()
        y[30] = 3
        source = DataLoader(Paired(x, y), batch_size=25)
    elif case == "labels-count":
        source = (x, y[:-1])
    elif case == "loader-batch":
        source = [torch.zeros(2, 3)]
    elif case == "loader-triple":
        source = [(x, y, y)]
    elif case == "inputs-not-dict":
        source = [([x["audio"], x["image"]], y)]
    elif case == "encoder-3d":
        enc["image"] = nn.Sequential(nn.Linear(4, 3), nn.Unflatten(1, (3, 1)))
        source = DataLoader(Paired(x, y), batch_size=16)
    elif case == "sum-widths":
        head, fusion = {"audio": nn.Linear(5, 3), "image": nn.Linear(3, 4)}, "sum"
    elif case == "sum-unknown-head":
        head, fusion = {"audio": nn.Linear(5, 3), "imag": nn.Linear(3, 3)}, "sum"
    elif case == "concat-with-dict":
        head = {"audio": nn.Linear(5, 3), "image": nn.Linear(3, 3)}
    elif case == "sum-with-linear":
        fusion = "sum"
    elif case == "fusion":
        fusion = "film"
    elif case == "empty":
        source = []
    elif case == "data-type":
        source = x
    elif case == "encoder-type":
        enc["image"] = nn.Tanh
    elif case == "one-modality":
        enc = {"audio": enc["audio"]}
    with pytest.raises(error, match=message):
        dependency_shares(enc, head, source, fusion=fusion)  # type: ignore[arg-type]


def test_runs_on_the_encoders_device_by_default_and_on_the_given_one() -> None:
    x, y = data()
    enc = encoders()
    head = nn.Linear(8, CLASSES)
    on_cpu = dependency_shares(enc, head, (x, y), device="cpu")
    assert dependency_shares(enc, head, (x, y)) == on_cpu
    if torch.cuda.is_available():
        moved = {name: module.cuda() for name, module in enc.items()}
        on_gpu = dependency_shares(moved, head.cuda(), (x, y))  # inputs moved to the encoders' device
        assert on_gpu.share == pytest.approx(on_cpu.share, rel=1e-4)
