"""The README's baselines loop (the block tagged ``readme-test: baselines_torch``), executed as written."""

from __future__ import annotations

import ast

import pytest

pytest.importorskip("torch")

from readme_blocks import readme_blocks

(EXAMPLE,) = readme_blocks("baselines_torch")


def test_baselines_example_trains_each_method(capsys) -> None:  # type: ignore[no-untyped-def]
    namespace: dict[str, object] = {}
    exec(compile(EXAMPLE, "README baselines example", "exec"), namespace)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["AGM", "MMPareto", "InfoReg", "ARL"]
    coefficients = {line.split()[0]: ast.literal_eval(line.split(" ", 1)[1]) for line in lines}
    assert all(value != 1.0 for value in coefficients["AGM"].values())  # AGM moved both encoders
    assert all(0.0 < value <= 3.0 for value in coefficients["MMPareto"].values())  # 1.5 x (2 k), k in [0, 1]
    assert coefficients["InfoReg"] == {"audio": 1.0, "image": 1.0}  # InfoReg adds a pull, scales nothing
    assert all(1.0 < value < 2.0 for value in coefficients["ARL"].values())  # 1 + w, w a softmax weight
