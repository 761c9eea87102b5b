"""The README's PyTorch quick start, executed verbatim (paste QUICKSTART into the README unchanged)."""

from __future__ import annotations

import json
import textwrap

import pytest

pytest.importorskip("torch")

QUICKSTART = textwrap.dedent(
    """
    import torch
    from torch import nn

    from pdmp import PDMP
    from pdmp.backends.torch import Modulator, rank_unimodal

    # Toy paired data: audio is informative, image barely.
    torch.manual_seed(0)
    n, classes = 320, 4
    y = torch.randint(0, classes, (n,))
    onehot = nn.functional.one_hot(y, classes).float()
    audio = torch.randn(n, 16) + 2.0 * onehot.repeat(1, 4)
    image = torch.randn(n, 8) + 0.3 * onehot.repeat(1, 2)
    train = {"audio": (audio[:256], y[:256]), "image": (image[:256], y[:256])}
    val = {"audio": (audio[256:], y[256:]), "image": (image[256:], y[256:])}

    # Stage 1: rank the modalities with cheap unimodal models (2 epochs on half the training set).
    ranking = rank_unimodal(
        {"audio": lambda: nn.Linear(16, classes), "image": lambda: nn.Linear(8, classes)},
        train, val, epochs=2, subset=0.5, lr=0.1, batch_size=32, progress=False,
    )
    ranking.save("ranking.json")  # order, scores and the budget used
    print(ranking.order, ranking.scores)

    # Stage 2: train the fused model; the dominant modality's encoder gets gamma_p, the other gamma_r.
    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.audio = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
            self.image = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
            self.head = nn.Linear(64, classes)  # fusion/head: never modulated

        def forward(self, a, v):
            return self.head(torch.cat([self.audio(a), self.image(v)], dim=1))

    model = Fused()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    policy = PDMP.from_ranking(ranking, gamma_p=10.0, gamma_r=0.5, warmup=1)  # epoch 0: no modulation
    with Modulator({"audio": model.audio, "image": model.image}, policy, mode="grad", optimizer=optimizer) as mod:
        for epoch in range(3):
            mod.set_epoch(epoch)
            for i in range(0, 256, 32):
                loss = nn.functional.cross_entropy(model(audio[i : i + 32], image[i : i + 32]), y[i : i + 32])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                mod.step()
            print(epoch, mod.coefficients)
    # Under Adam/AdamW use mode="lr": the coefficients then multiply each modality's learning rate.
    """
)


def test_quickstart_runs_and_does_what_it_says(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(QUICKSTART, "README quick start", "exec"), namespace)
    ranking = namespace["ranking"]
    assert ranking.dominant == "audio"  # type: ignore[attr-defined]
    saved = json.loads((tmp_path / "ranking.json").read_text())
    assert saved["order"] == ["audio", "image"] and saved["budget"]["subset"] == 0.5
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "0 {'audio': 1.0, 'image': 1.0}"  # warm-up epoch
    assert out[2] == "1 {'audio': 10.0, 'image': 0.5}"
    assert namespace["mod"].step_count == 24 and not namespace["mod"].active  # type: ignore[attr-defined]
