"""The docs' rebalancing loop (the block tagged ``readme-test: rebalancing_torch``), executed as written."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from readme_blocks import readme_blocks

(EXAMPLE,) = readme_blocks("rebalancing_torch")


def test_rebalancing_example_trains_each_method(capsys) -> None:  # type: ignore[no-untyped-def]
    namespace: dict[str, object] = {}
    exec(compile(EXAMPLE, "docs rebalancing example", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["GBlending", "PMR", "DiagnosingRelearning", "MLA"]
    accuracies = {line.split()[0]: float(line.split()[1]) for line in lines}
    # The audio input separates the classes well: every method learns far above chance (0.25).
    assert all(value > 0.5 for value in accuracies.values()), accuracies
