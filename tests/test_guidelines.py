"""experiments/guidelines.py's networks, without timing them: every table's rows have the
multiply-adds the paper holds fixed (checked with ``jaxsep.cost``), the paper's numbers fit its
tables, and the torch twin computes the same network as the jaxsep one.

The script runs from experiments/ (it imports the shared ``_timing`` module from there), so
that folder goes on the path here too; tests/test_benchmarks.py runs it whole, with ``-m slow``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsep.cost import conv_cost

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
guidelines = importlib.import_module("guidelines")

SETTINGS = tuple(guidelines.SETTINGS)


def _analytic_macs(net) -> int:
    """The sum of ``conv_cost`` over the network's kernels, one image (SAME, stride 1: the
    output is ``size x size``)."""
    total = 0
    for kh, _, group_in, out in net.kernel_shapes():
        groups = net.groups if kh == 1 and net.guideline == 2 else 1
        total += conv_cost(group_in * groups, out, kh, net.size, groups=groups).macs
    return total


@pytest.mark.parametrize("guideline", guidelines.GUIDELINES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_rows_hold_the_multiply_adds_fixed(setting, guideline):
    """Per table and width: each row's traced multiply-adds equal the analytic count of its
    kernels, and stay within the table's tolerance of the first row's (the paper's own
    channel counts are rounded; see MACS_TOLERANCE)."""
    tolerance = guidelines.MACS_TOLERANCE[guideline]
    for scale in guidelines.SCALES:
        rows = guidelines.table_rows(guideline, setting, scale)
        counts = [guidelines.macs(net) for net in rows]
        assert counts == [_analytic_macs(net) for net in rows]
        assert guidelines.macs(rows[0], batch=3) == 3 * counts[0]
        for net, count in zip(rows, counts):
            assert abs(count / counts[0] - 1) <= tolerance, (net.label, count, counts[0])


def test_the_first_rows_match_the_papers_formulas():
    """B = h w c1 c2 per 1x1 layer (the paper's Eq. 1 notation), 10 blocks of two layers; a
    1x1 group convolution has h w c^2 / g."""
    g1 = guidelines.table_rows(1, "gpu", 1)[0]
    assert g1.channels == (128, 128) and g1.size == 56 and g1.blocks == 10
    assert guidelines.macs(g1) == 10 * 2 * 56 * 56 * 128 * 128
    g2 = guidelines.table_rows(2, "gpu", 1)[3]
    assert (g2.groups, g2.channels) == (8, (360,))
    assert guidelines.macs(g2) == 10 * 56 * 56 * 360 * 360 // 8


def test_widths_follow_the_paper_and_divide_the_groups():
    arm_g2 = guidelines.table_rows(2, "arm", 1)
    # the paper's arm column has c = 180 at g = 8, which 8 does not divide: 184 is nearest in MACs
    assert [n.channels[0] for n in arm_g2] == [64, 90, 128, 184]
    for setting in SETTINGS:
        for scale in guidelines.SCALES:
            for net in guidelines.table_rows(2, setting, scale):
                assert net.channels[0] % net.groups == 0
            g3 = {n.label.split(" (")[0]: n for n in guidelines.table_rows(3, setting, scale)}
            assert g3["2-fragment-series"].channels == g3["2-fragment-parallel"].channels
            assert g3["4-fragment-series"].channels[0] * 2 == g3["1-fragment"].channels[0]
    assert guidelines.table_rows(4, "gpu", 2)[0].in_channels == 4 * 64


def test_paper_numbers_fit_the_tables():
    for guideline in guidelines.GUIDELINES:
        for setting in SETTINGS:
            rows = guidelines.PAPER[guideline][setting]
            assert len(rows) == len(guidelines.table_rows(guideline, setting))
            assert all(len(row) == len(guidelines.SCALES) for row in rows)
        speeds = guidelines.paper_speeds(guideline, 4)
        assert speeds["gpu"] == [row[2] for row in guidelines.PAPER[guideline]["gpu"]]
    with pytest.raises(ValueError, match="guideline must be one of"):
        guidelines.table_rows(5, "gpu")


def _small(guideline):
    return guidelines.table_rows(guideline, "arm", 1, size=4, blocks=2)


def _jax_output(net):
    x, kernels = guidelines.init_arrays(net, batch=2)
    forward = jax.jit(guidelines.jax_forward(net))
    return x, kernels, np.asarray(forward(jnp.asarray(x), [jnp.asarray(k) for k in kernels]))


@pytest.mark.parametrize("guideline", guidelines.GUIDELINES)
def test_torch_twin_is_the_same_network(guideline):
    torch = pytest.importorskip("torch")
    for net in _small(guideline):
        x, kernels, ours = _jax_output(net)
        model = guidelines.torch_twin(net, kernels, "cpu")
        with torch.inference_mode():
            theirs = model(guidelines._torch_input(x, "cpu")).permute(0, 2, 3, 1).numpy()
        # float32 sums of at most a few hundred products per output, two blocks deep
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max(),
                                   err_msg=net.label)


def test_relu_and_shortcut_switches_change_the_output():
    outputs = [_jax_output(net)[2] for net in _small(4)]
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not np.allclose(outputs[i], outputs[j])
