"""Tests for jaxsep.summary: per-layer shapes, parameters and multiply-adds."""

from __future__ import annotations

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from rich.console import Console

import jaxsep
from jaxsep import models, nn
from jaxsep.cost import conv_cost
from jaxsep.summary import LayerRow, ModelSummary, Totals, summary

IMAGENET = (1, 224, 224, 3)


@functools.lru_cache(maxsize=None)
def imagenet_summary(name: str, **kwargs) -> ModelSummary:
    model = nnx.eval_shape(lambda: models.create(name, variant="imagenet", **kwargs))
    return summary(model, IMAGENET, show=False)


# The MobileNet paper, Tables 4 and 6: (kwargs, params, multiply-adds). The paper counts
# convolution and fully connected weights (not BatchNorm's scale and bias).
PAPER = [
    ({}, 4.2e6, 569e6),
    ({"conv": "standard"}, 29.3e6, 4866e6),
    ({"width_multiplier": 0.5}, 1.3e6, 149e6),
]


@pytest.mark.parametrize("kwargs,params,macs", PAPER, ids=["separable", "standard", "width-0.5"])
def test_mobilenet_v1_totals_match_the_paper(kwargs, params, macs):
    totals = imagenet_summary("mobilenet_v1", **kwargs).totals
    assert totals.params_without_norm == pytest.approx(params, rel=0.02)
    assert totals.macs == pytest.approx(macs, rel=0.02)


def test_mobilenet_v1_exact_counts():
    s = imagenet_summary("mobilenet_v1")
    assert s.totals == Totals(params=4_231_976, macs=568_740_352, norm_params=21_888)
    assert s.totals.params_without_norm == 4_210_088
    assert s.totals.flops == 2 * 568_740_352
    # The paper's Table 2: 94.86% of the multiply-adds in 1x1 convolutions, 3.06% depthwise.
    by_kind = {}
    for row in s.rows:
        by_kind[row.kind] = by_kind.get(row.kind, 0) + row.macs
    assert 100 * by_kind["PointwiseConv"] / s.totals.macs == pytest.approx(94.86, abs=0.01)
    assert 100 * by_kind["DepthwiseConv"] / s.totals.macs == pytest.approx(3.06, abs=0.01)


def test_mobilenet_v2_matches_the_reference():
    """The paper's 300 M multiply-adds; 3.47 M parameters as the TF reference counts them
    (the paper prints 3.4 M), 3,504,872 with BatchNorm's, as torchvision counts them."""
    totals = imagenet_summary("mobilenet_v2").totals
    assert totals.params == 3_504_872
    assert totals.params_without_norm == pytest.approx(3.47e6, rel=0.02)
    assert totals.macs == pytest.approx(300e6, rel=0.02)


def test_rows_add_up_and_follow_the_call_order():
    s = imagenet_summary("mobilenet_v1")
    assert sum(r.params for r in s.rows) == s.totals.params
    assert sum(r.macs for r in s.rows) == s.totals.macs  # no "(other)" row
    names = ["stem.conv", "stem.norm", "blocks.0.spatial.conv", "blocks.0.spatial.norm"]
    assert [r.name for r in s.rows[:4]] == names
    first = s.rows[0]
    assert (first.kind, first.output_shape, first.params) == ("Conv", (1, 112, 112, 32), 864)
    assert first.macs == conv_cost(3, 32, 3, 112).macs
    dw = s.rows[2]
    dw_macs = conv_cost(32, 32, 3, 112, depth_multiplier=1).macs
    assert (dw.kind, dw.params, dw.macs) == ("DepthwiseConv", 288, dw_macs)
    assert s.rows[-1] == LayerRow("classifier", "Linear", (1, 1000), 1_025_000, 1_024_000)
    assert s.output_shape == (1, 1000) and s.input_shape == IMAGENET
    assert len({r.name for r in s.rows}) == len(s.rows)


def test_a_real_module_and_the_batch():
    """A real (allocated) module works too; it is one row even with a norm inside; the
    multiply-adds are for the whole input batch; the module is left as it was."""
    layer = nn.SeparableConv(
        4, 8, (3, 3), strides=2, norm=nnx.BatchNorm, rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))
    )
    before = jax.tree.map(np.asarray, nnx.state(layer))
    s = summary(layer, (2, 8, 8, 4), show=False)
    (row,) = s.rows
    assert row.kind == "SeparableConv" and row.output_shape == (2, 4, 4, 8)
    cost = conv_cost(4, 8, 3, 4, separable=True, bias=True)
    assert row.params == cost.params + 2 * 4  # + the BatchNorm's scale and bias
    assert row.macs == 2 * cost.macs
    assert s.totals.norm_params == 8
    jax.tree.map(np.testing.assert_array_equal, nnx.state(layer), before)
    assert not layer.norm.use_running_average  # still in train mode


def test_printing_plain_and_rich(capsys):
    model = nnx.eval_shape(
        lambda: models.create("mobilenet_v1", variant="cifar", width_multiplier=0.25)
    )
    s = summary(model, (1, 32, 32, 3))
    printed = capsys.readouterr().out  # not a terminal: plain text
    assert printed.strip() == str(s).strip()
    assert "blocks.12.pointwise.conv" in printed and "PointwiseConv" in printed
    assert f"Total params: {s.totals.params:,}" in printed
    assert f"Total multiply-adds: {s.totals.macs:,}" in printed
    assert "\u2502" not in printed  # no box drawing

    console = Console(file=io.StringIO(), force_terminal=True, width=150, record=True)
    s.print(console)
    text = console.export_text()
    assert "\u2503" in text or "\u2502" in text  # a rich table
    assert "blocks.12.pointwise.conv" in text and f"{s.totals.macs:,}" in text


def test_exported_from_the_package():
    assert jaxsep.summary is summary
    assert jaxsep.nn is nn and jaxsep.models is models


def test_bfloat16_input():
    model = nnx.eval_shape(lambda: nn.PointwiseConv(4, 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    s = summary(model, (1, 2, 2, 4), dtype=jnp.bfloat16, show=False)
    assert s.totals.macs == 2 * 2 * 4 * 8
