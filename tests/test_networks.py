"""Generators with domain sharing layers, projection head, image pool, exported generator state."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import BasicUNet

from bundle.networks import ImagePool, MultiConDoSGenerators, ProjectionHead

FEATURES = (4, 4, 8, 8, 16, 4)


def _pair(shared=("down_4", "upcat_4")) -> MultiConDoSGenerators:
    return MultiConDoSGenerators(features=FEATURES, shared_blocks=shared, projection_hidden=8, projection_dim=4)


def test_shared_blocks_are_one_set_of_parameters():
    gens = _pair()
    ab, ba = gens.g_ab.unet, gens.g_ba.unet
    assert ab.down_4 is ba.down_4 and ab.upcat_4 is ba.upcat_4
    assert ab.down_3 is not ba.down_3 and ab.final_conv is not ba.final_conv
    # mutating the shared block through G_AB changes G_BA
    weight = next(ab.down_4.parameters())
    with torch.no_grad():
        weight.add_(1.0)
    assert torch.equal(next(ba.down_4.parameters()), weight)
    names = gens.shared_parameter_names()
    assert names and all(n.startswith(("down_4.", "upcat_4.")) for n in names)
    # ... while the domain-specific blocks differ
    assert not torch.equal(next(ab.down_3.parameters()), next(ba.down_3.parameters()))


def test_no_shared_blocks_gives_disjoint_generators():
    gens = _pair(shared=())
    ids_ab = {id(p) for p in gens.g_ab.parameters()}
    ids_ba = {id(p) for p in gens.g_ba.parameters()}
    assert not ids_ab & ids_ba
    assert gens.shared_parameter_names() == []


def test_generator_optimizer_lists_each_tensor_once():
    gens = _pair()
    opt = torch.optim.Adam(gens.parameters(), lr=1e-3)
    params = [p for group in opt.param_groups for p in group["params"]]
    assert len(params) == len({id(p) for p in params})
    expected = {id(p) for m in (gens.g_ab, gens.g_ba, gens.head) for p in m.parameters()}
    assert {id(p) for p in params} == expected
    # the shared tensors are fewer than two independent copies
    assert len(params) < len(list(_pair(shared=()).parameters()))


def test_unknown_or_repeated_shared_block_is_rejected():
    with pytest.raises(ValueError, match="unknown block 'down_9'"):
        _pair(shared=("down_9",))
    with pytest.raises(ValueError, match="repeated"):
        _pair(shared=("down_4", "down_4"))


def test_generator_outputs_and_bottleneck():
    gens = _pair()
    x = torch.randn(3, 1, 32, 48) * 5
    y, feat = gens.g_ab(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0
    assert feat.shape == (3, FEATURES[4], 2, 3)
    z = gens.head(feat)
    assert z.shape == (3, 4)
    # the wrapper's forward equals BasicUNet's own forward followed by tanh
    assert torch.allclose(y, torch.tanh(gens.g_ab.unet(x)), atol=1e-6)


def _run(pair: MultiConDoSGenerators, a, b, flags: dict) -> tuple[dict, list[int]]:
    """The pair's outputs (their gradients accumulated) and the batch size of each generator call."""
    batches: list[int] = []
    hooks = [g.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0])) for g in (pair.g_ab, pair.g_ba)]
    out = pair(a, b, **flags)
    sum(v.square().mean() for v in out.values()).backward()
    for hook in hooks:
        hook.remove()
    return out, batches


@pytest.mark.parametrize("flags", [{}, {"identity": True, "project_local": True}])
def test_batched_cycle_gives_the_outputs_and_gradients_of_separate_calls(flags):
    batched = MultiConDoSGenerators(features=FEATURES, projection_hidden=8, projection_dim=4, local_level="down_1")
    separate = copy.deepcopy(batched)
    separate.batch_cycle = False
    a, b = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    out, calls = _run(batched, a, b, flags)
    reference, reference_calls = _run(separate, a, b, flags)
    assert len(calls) == len(reference_calls) - 1 and 6 in calls  # G_AB once on a and fake_a
    for key, value in reference.items():
        torch.testing.assert_close(out[key], value, rtol=1e-5, atol=1e-6, msg=key)
    for (name, p), q in zip(batched.named_parameters(), separate.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_batch_norm_keeps_the_generator_calls_separate():
    assert not MultiConDoSGenerators(features=FEATURES, norm="batch").batch_cycle
    assert MultiConDoSGenerators(features=FEATURES, norm=("group", {"num_groups": 2})).batch_cycle


def test_projection_head_pools_globally():
    head = ProjectionHead(6, 5, 3)
    feat = torch.randn(2, 6, 4, 4)
    pooled = feat.mean(dim=(2, 3), keepdim=True).expand_as(feat)
    assert torch.allclose(head(feat), head(pooled), atol=1e-6)


def test_export_state_loads_into_plain_basic_unet():
    gens = _pair()
    state, network = gens.export_state(), gens.network_record()
    assert sorted(state) == ["g_ab", "g_ba"]
    assert network["args"]["features"] == list(FEATURES)
    assert network["shared_blocks"] == ["down_4", "upcat_4"]
    for key in ("g_ab", "g_ba"):
        net = BasicUNet(**network["args"])
        net.load_state_dict(state[key], strict=True)
    assert torch.equal(
        state["g_ab"]["down_4.convs.conv_0.conv.weight"], state["g_ba"]["down_4.convs.conv_0.conv.weight"]
    )


def test_init_std_is_applied():
    gens = MultiConDoSGenerators(features=(16, 16, 16, 16, 16, 16), init_std=0.02)
    w = gens.g_ab.unet.conv_0.conv_0.conv.weight.detach()
    assert 0.01 < float(w.std()) < 0.03 and abs(float(w.mean())) < 0.01


def test_image_pool():
    torch.manual_seed(0)
    assert torch.equal(ImagePool(0).query(torch.ones(2, 1, 4, 4)), torch.ones(2, 1, 4, 4))
    pool = ImagePool(3)
    first = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    assert torch.equal(pool.query(first), first)  # filling: returns the input
    seen_old = False
    for step in range(20):
        new = torch.full((2, 1, 2, 2), 100.0 + step)
        out = pool.query(new)
        assert out.shape == new.shape
        for img in out:
            value = float(img.flatten()[0])
            assert value == 100.0 + step or value < 100.0 + step  # new, or an older stored fake
            seen_old |= value != 100.0 + step
    assert seen_old and len(pool.images) == 3
    restored = ImagePool(1)
    restored.load_state_dict(pool.state_dict())
    assert restored.pool_size == 3 and all(torch.equal(a, b) for a, b in zip(restored.images, pool.images))
