"""The README's adaptive-rule loop (the block tagged ``readme-test: adaptive_torch``), executed as written."""

from __future__ import annotations

import ast

import pytest

pytest.importorskip("torch")

from readme_blocks import readme_blocks

(EXAMPLE,) = readme_blocks("adaptive_torch")


def test_the_memorising_branch_makes_the_rule_add_the_dominant_modalitys_loss(capsys) -> None:  # type: ignore[no-untyped-def]
    namespace: dict[str, object] = {}
    exec(compile(EXAMPLE, "README adaptive example", "exec"), namespace)
    (line,) = capsys.readouterr().out.splitlines()
    largest = ast.literal_eval(line.split(":", 1)[1].strip())
    assert largest["audio"] > 0.5  # the image branch took more than its share, so audio got its own loss
    assert largest["audio"] < 4.0  # bounded by auxiliary
    assert largest["image"] == 0.0  # scope "dominant"
    policy = namespace["policy"]
    assert policy.coefficients() == {"audio": 1.0, "image": 1.0}  # gamma_max = gamma_min = 1: no scaling
