"""minicoat against timm itself: timm's stock ``coatnet_N_224`` with random weights, float64.

``interop.timm.load_state_dict`` of timm's state dict must give logits within 1e-12 (normwise)
of timm's, in evaluation and training mode (BatchNorm batch statistics and the updated running
statistics), with every gradient within 1e-12 of timm's autograd; the state dict round trip
is exact; a model resized to another image size matches timm's resized model. Measured on a
2-core Intel Xeon (timm 1.0.31): logits 1.1e-15 .. 1.3e-15 (docs/timm.md has the table).

The CoAtNet-3 and -4 cases hold 167M and 275M parameters: float64 logits only (weights
~2.2 GB twice), the round trip in float32; gradients are compared for CoAtNet-0 and -2.
"""

import autograd.numpy as anp
import numpy as np
import pytest
import torch
from helpers import assert_trees_close
from timm_helpers import import_timm, numpy_state_dict, timm_model, to_nchw

import minicoat as mc
from minicoat.interop import resize_rel_bias_table
from minicoat.interop import timm as mt

TOL = 1e-12
MODELS = [f"coatnet_{n}_224" for n in range(5)]
SIZES = [(64, 64), (64, 96)]  # a small square and a non-square size (S4: 2x2 and 2x3)
BIG = {"coatnet_3_224", "coatnet_4_224"}


def _images(size, n=1, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *size, 3))


def _marks(name):
    return [pytest.mark.slow] if name in BIG else []


CASES = [pytest.param(name, size, marks=_marks(name), id=f"{name}-{size[0]}x{size[1]}")
         for name in MODELS for size in SIZES]


@pytest.mark.parametrize("name, size", CASES)
def test_stock_timm_logits_match(name, size):
    timm = import_timm()
    model = timm_model(timm, name, size).eval()
    x = _images(size)
    with torch.no_grad():
        theirs = model(to_nchw(x)).numpy()
    config = mt.config(name, image_size=size)
    params, state = mt.load_state_dict(numpy_state_dict(model), config)
    n_timm = sum(p.numel() for p in model.parameters())
    del model  # CoAtNet-4: 2.2 GB of float64 weights each
    assert mc.count_params(params) == mc.count_params(config) == n_timm
    ours, _ = mc.forward(params, state, x, config)
    error = mc.rel_error(ours, theirs)
    assert error <= TOL, f"{name} {size}: logits rel_error(minicoat, timm) = {error:.2e}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in MODELS])
def test_state_dict_round_trip_is_exact(name):
    """timm -> minicoat -> timm gives back every array bit for bit, in timm's shapes and
    dtypes, and timm's strict ``load_state_dict`` takes it (float32: the conversions only move
    elements, so one dtype shows it)."""
    timm = import_timm()
    model = timm_model(timm, name, SIZES[1], dtype=torch.float32)
    original = numpy_state_dict(model)
    config = mt.config(name, image_size=SIZES[1])
    params, state = mt.load_state_dict(original, config)
    back = mt.to_state_dict(params, state, config)
    assert back.keys() == original.keys()
    for key, value in original.items():
        if key.endswith("num_batches_tracked"):  # minicoat keeps no counter: written as 0
            assert back[key].shape == () and back[key] == 0, key
            continue
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert np.array_equal(back[key], value), f"{key} changed in the round trip"
    del params, state
    model.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


# Every paper-style config at 64x64 (CoAtNet-0 also at the non-square size). CoAtNet-2 adds what
# CoAtNet-0 and -1 lack: a stage that keeps its input's width (S1: a shortcut pool with no
# projection). -3 and -4 peak at 6.8 and 10.9 GB (float64 weights and gradients on both sides;
# benchmarks/timm_gradients.py measures one model alone, docs/timm.md).
GRAD_CASES = [pytest.param("coatnet_0_224", size, id=f"coatnet_0_224-{size[0]}x{size[1]}")
              for size in SIZES]
GRAD_CASES += [pytest.param(name, SIZES[0], id=f"{name}-64x64", marks=pytest.mark.slow)
               for name in MODELS[1:]]


@pytest.mark.parametrize("name, size", GRAD_CASES)
def test_train_mode_and_every_gradient_match(name, size):
    """Training mode: logits with batch statistics, the updated running statistics, and the
    gradient of ``sum(logits * g)`` for every parameter, against timm's autograd."""
    timm = import_timm()
    model = timm_model(timm, name, size).train()
    x = _images(size, n=2)
    g = np.random.default_rng(1).standard_normal((2, 1000))
    config = mt.config(name, image_size=size)
    params, state = mt.load_state_dict(numpy_state_dict(model), config)
    theirs = model(to_nchw(x))  # updates timm's running statistics in place
    (theirs * torch.from_numpy(g)).sum().backward()
    _, theirs_state = mt.load_state_dict(numpy_state_dict(model), config)
    grads_by_name = {k: v.grad.numpy() for k, v in model.named_parameters()}
    theirs_grads, _ = mt.load_state_dict({**numpy_state_dict(model), **grads_by_name}, config)

    ours, ours_state = mc.forward(params, state, x, config, train=True)
    _, grads = mc.value_and_grad(
        lambda p: anp.sum(mc.forward(p, state, x, config, train=True, check=False)[0] * g)
    )(params)
    error = mc.rel_error(ours, theirs.detach().numpy())
    assert error <= TOL, f"train-mode logits rel_error = {error:.2e}"
    assert_trees_close(ours_state, theirs_state, TOL, "running statistics", "minicoat", "timm")
    assert_trees_close(grads, theirs_grads, TOL, "gradient", "minicoat", "timm")


@pytest.mark.filterwarnings("ignore::UserWarning:timm.layers.interpolate")  # timm's own code
def test_resized_tables_and_model_match_timm():
    """timm's ``resize_rel_pos_bias_table`` and ours agree (timm interpolates in float32:
    1e-6), and a timm model loaded at another size through timm's own checkpoint filter
    computes what minicoat computes with the tables it made (1e-12)."""
    timm = import_timm()
    from timm.layers import resize_rel_pos_bias_table
    from timm.models.maxxvit import checkpoint_filter_fn

    rng = np.random.default_rng(0)
    for old, new in [((4, 4), (7, 7)), ((7, 7), (4, 4)), ((2, 2), (2, 3)), ((4, 4), (12, 12))]:
        table = rng.standard_normal((3, (2 * old[0] - 1) * (2 * old[1] - 1)))
        theirs = resize_rel_pos_bias_table(
            torch.from_numpy(table.T.copy()), new_window_size=new,
            new_bias_shape=((2 * new[0] - 1) * (2 * new[1] - 1), 3)).numpy().T
        ours = resize_rel_bias_table(table, old, new)
        assert ours.shape == theirs.shape and ours.dtype == table.dtype
        error = mc.rel_error(ours, theirs)
        assert error <= 1e-6, f"resize {old} -> {new}: rel_error = {error:.2e}"

    source = timm_model(timm, "coatnet_0_224", (64, 64)).eval()
    target = timm.create_model("coatnet_0_224", img_size=(96, 96)).double().eval()
    resized = checkpoint_filter_fn(source.state_dict(), target)
    target.load_state_dict(resized)
    x = _images((96, 96))
    with torch.no_grad():
        theirs = target(to_nchw(x)).numpy()
    config = mt.config("coatnet_0_224", image_size=96)
    params, state = mt.load_state_dict(numpy_state_dict(target), config)
    ours, _ = mc.forward(params, state, x, config)
    assert mc.rel_error(ours, theirs) <= TOL
    # minicoat's own resize, from the 64x64 checkpoint: within timm's float32 rounding
    params, state = mt.load_state_dict(numpy_state_dict(source), config)
    ours, _ = mc.forward(params, state, x, config)
    error = mc.rel_error(ours, theirs)
    assert 0 < error <= 1e-6, f"resized by minicoat vs by timm: rel_error = {error:.2e}"


def test_interop_refuses_what_timm_cannot_hold():
    with pytest.raises(ValueError, match="unknown timm model"):
        mt.config("coatnet_9_224")
    with pytest.raises(ValueError, match="cannot be expressed as timm's CoAtNet"):
        mt.to_state_dict(*mc.init_params(mc.config("coatnet-digits")), mc.config("coatnet-digits"))
    config = mt.config("coatnet_0_224", image_size=64, num_classes=10)
    sd = mt.to_state_dict(*mc.init_params(config), config)
    del sd["head.fc.bias"]
    with pytest.raises(ValueError, match=r"missing \['head.fc.bias'\]"):
        mt.load_state_dict(sd, config)


def test_the_way_out_to_scale_and_back():
    """docs/timm.md's round trip on a CPU: minicoat's weights exported, loaded into timm
    (strict), one training step there (SGD, timm's autograd), imported back: minicoat's logits
    of the trained weights equal timm's, and so do the updated BatchNorm statistics."""
    timm = import_timm()
    config = mt.config("coatnet_0_224", image_size=64, num_classes=10)
    params, state = mc.init_params(config, seed=0, dtype=np.float64)
    model = timm.create_model("coatnet_0_224", img_size=64, num_classes=10).double()
    model.load_state_dict({k: torch.from_numpy(v)
                           for k, v in mt.to_state_dict(params, state, config).items()})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, labels = _images((64, 64), n=2), torch.tensor([3, 7])
    loss = torch.nn.functional.cross_entropy(model.train()(to_nchw(x)), labels)
    loss.backward()
    optimizer.step()
    trained, trained_state = mt.load_state_dict(numpy_state_dict(model), config)
    assert mc.rel_error(trained["head"]["w"], params["head"]["w"]) > 1e-6  # it did train
    with torch.no_grad():
        theirs = model.eval()(to_nchw(x)).numpy()
    ours, _ = mc.forward(trained, trained_state, x, config)
    assert mc.rel_error(ours, theirs) <= TOL
