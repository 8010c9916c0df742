"""The networks of condgen.priors against the formulas of their docstrings."""

import pytest
import torch

from condgen.priors import MLP


def formula(net: MLP, x_t, t, context=None, drop=None):
    r"""The MLP written as its docstring gives it, with the embedding concatenated:
    :math:`e = [\gamma(t); W_c c + b_c]` (the null embedding where there is no context),
    :math:`h_{i+1} = h_i + a(W_i h_i + U_i e + b_i)`,
    :math:`f = s(e) \odot x_t + W_o h_L + b_o`."""
    t = torch.as_tensor(t, dtype=x_t.dtype)
    parts = [net.time_embedding(t)]
    if net.context_embedding is not None:
        embedding = net.context_embedding
        c = embedding.null if context is None else embedding.linear(context)
        if drop is not None:
            c = torch.where(drop.unsqueeze(-1), embedding.null, c)
        parts.append(c)
    batch = torch.broadcast_shapes(x_t.shape[:-1], *(p.shape[:-1] for p in parts))
    e = torch.cat([p.expand(*batch, -1) for p in parts], dim=-1)
    u = e @ net.conditioning.weight.T + net.conditioning.bias
    *shifts, gate = u.split([*net.hidden, x_t.shape[-1]], dim=-1)
    h = x_t.expand(*batch, -1)
    for layer, shift in zip(net.layers, shifts, strict=True):
        y = net.activation(h @ layer.weight.T + layer.bias + shift)
        h = h + y if y.shape == h.shape else y
    return gate * x_t + h @ net.output.weight.T + net.output.bias


CASES = [(0, "batched"), (0, "shared time")] + [
    (context, case)
    for context in (3, 100)  # a context smaller and larger than the embedding
    for case in ("batched", "shared time", "no context", "dropped")
]


@pytest.mark.parametrize("context, case", CASES)
def test_mlp_is_its_formula(context, case):
    """The MLP computes the embedding's products in whichever order is cheaper (a small context
    through U_c W_c, a time shared by the batch once): its values and its gradients are the
    formula's, to float32 rounding, for contexts smaller and larger than the embedding."""
    torch.manual_seed(0)
    net = MLP(2, context=context, hidden=(32, 32, 16), time_embedding=8)
    for p in net.parameters():  # the zero-initialised gate and null embedding too
        torch.nn.init.normal_(p, std=0.3)
    x_t, t = torch.randn(6, 2), torch.rand(6)
    c = torch.randn(6, context) if context else None
    drop = None
    if case == "shared time":
        t, c = t[0], None if c is None else c[0]
    elif case == "no context":
        c = None
    elif case == "dropped":
        drop = torch.tensor([True, False, True, False, False, True])
    out, expected = net(x_t, t, c, drop), formula(net, x_t, t, c, drop)
    assert out.shape == expected.shape == (6, 2)
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()), allow_unused=True)
    references = torch.autograd.grad(
        expected.square().sum(), list(net.parameters()), allow_unused=True
    )
    for name, g, r in zip(dict(net.named_parameters()), grads, references, strict=True):
        if r is None:
            assert g is None or not g.any(), name
        else:
            assert torch.allclose(g, r, atol=1e-4, rtol=1e-4), name
