"""OP-convNet against the paper's Table 1: every layer's activation shape and learnables."""

from __future__ import annotations

import torch

from train.model import OPConvNet, count_learnables, init_paper

# Table 1 of Qadri et al. 2021: (layer, activations H x W x C, learnables)
TABLE_1 = [
    ("conv1", (15, 15, 64), 640),
    ("pool1", (7, 7, 64), 0),
    ("conv2", (5, 5, 128), 73_856),
    ("pool2", (3, 3, 128), 0),
    ("conv3", (3, 3, 256), 295_168),
    ("pool3", (2, 2, 256), 0),
    ("fc1", (1, 1, 1024), 1_049_600),
    ("fc2", (1, 1, 256), 262_400),
    ("fc3", (1, 1, 2), 514),
]


def test_every_layer_matches_table_1():
    """Activation shapes after each layer and learnables per layer equal Table 1; 1,682,178 in all."""
    model = OPConvNet().eval()
    shapes = {}
    for name, _, _ in TABLE_1:
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    model(torch.zeros(3, 1, 32, 32))
    for name, (h, w, c), learnables in TABLE_1:
        out = shapes[name]
        got = (out[2], out[3], out[1]) if len(out) == 4 else (1, 1, out[1])
        assert got == (h, w, c), name
        assert count_learnables(getattr(model, name)) == learnables, name
    assert count_learnables(model) == 1_682_178


def test_output_is_two_logits_and_dropout_only_in_training():
    """Two logits per patch; eval mode is deterministic, training mode applies dropout."""
    torch.manual_seed(0)
    model = OPConvNet()
    x = torch.rand(4, 1, 32, 32)
    model.eval()
    assert model(x).shape == (4, 2) and torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_paper_initialisation():
    """Weights drawn from N(0, 0.01), biases zero (section IV), reproducible from a generator."""
    a, b = OPConvNet(), OPConvNet()
    init_paper(a, generator=torch.Generator().manual_seed(1))
    init_paper(b, generator=torch.Generator().manual_seed(1))
    w = a.fc1.weight.detach()
    assert abs(float(w.mean())) < 1e-3 and abs(float(w.std()) - 0.01) < 1e-4
    assert all(float(m.bias.detach().abs().max()) == 0 for m in (a.conv1, a.conv2, a.conv3, a.fc1, a.fc2, a.fc3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
