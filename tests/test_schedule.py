"""Learning-rate rules against numbers worked out by hand."""
import pytest
import torch

from utils.schedule import lr_at_epoch, lr_range_line, make_optimizer, scaled_lr

approx = lambda x: pytest.approx(x, rel=1e-9)  # noqa: E731


@pytest.mark.parametrize(
    "optimizer, batch, init_lr, min_lr, expected",
    [
        ("sgd", 32, 1e-2, 1e-4, (5e-3, 5e-5)),  # half the nominal batch, inside the limits
        ("sgd", 1024, 1e-2, 1e-4, (1e-1, 1e-3)),  # 0.16 and 1.6e-3 clamp to hi and hi / 100
        ("sgd", 2, 1e-2, 1e-4, (5e-4, 5e-6)),  # 3.1e-4 and 3.1e-6 clamp to lo and lo / 100
        ("adam", 32, 1e-3, 1e-5, (5e-4, 5e-6)),
        ("adam", 256, 1e-3, 1e-5, (1e-3, 1e-5)),  # 4e-3 and 4e-5 clamp to hi and hi / 100
        ("adam", 8, 1e-3, 1e-5, (3e-4, 3e-6)),  # 1.25e-4 and 1.25e-6 clamp to lo and lo / 100
    ],
)
def test_scaled_lr_is_clamped(optimizer, batch, init_lr, min_lr, expected):
    lr, low = scaled_lr(batch, init_lr, min_lr, optimizer)
    assert (lr, low) == (approx(expected[0]), approx(expected[1]))


def test_lr_range_line_names_the_rates_the_clamp_changed():
    # the recipe's defaults under Adam: 1e-2 and 1e-4 at batch 64 become 1e-3 and 1e-5
    line = lr_range_line(64, 1e-2, 1e-4, "adam")
    assert "Learning rate 0.001 falling to 1e-05" in line
    assert "Init_lr 0.01 and Min_lr 0.0001" in line and "clamped" in line
    # a Min_lr raised above Adam's ceiling is named alone
    line = lr_range_line(64, 1e-3, 2e-4, "adam")
    assert "falling to 1e-05" in line and "Min_lr 0.0002 scaled" in line and "Init_lr" not in line
    # rates inside the range are used as given: no clamp to report
    line = lr_range_line(32, 1e-2, 1e-4, "sgd")
    assert line == "Learning rate 0.005 falling to 5e-05 (sgd, batch 32)"


def test_cos_schedule_warmup_cosine_and_plateau():
    # 100 epochs: 3 warm-up epochs from 0.01, cosine over 92 epochs, the last 5 at min_lr
    lr = lambda epoch: lr_at_epoch(epoch, 0.1, 0.001, 100, "cos")  # noqa: E731
    assert lr(0) == approx(0.01)
    assert lr(1) == approx(0.01 + 0.09 / 9)
    assert lr(2) == approx(0.01 + 0.09 * 4 / 9)
    assert lr(3) == approx(0.1)
    assert lr(49) == approx(0.001 + 0.5 * 0.099)  # half-way through the cosine
    assert lr(94) > 0.001
    assert lr(95) == approx(0.001) and lr(99) == approx(0.001)
    values = [lr(e) for e in range(3, 96)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_cos_schedule_short_run():
    # 10 epochs: 1 warm-up epoch, cosine over 8, the last epoch at min_lr
    lr = lambda epoch: lr_at_epoch(epoch, 0.1, 0.001, 10, "cos")  # noqa: E731
    assert (lr(0), lr(1), lr(5), lr(9)) == (approx(0.01), approx(0.1), approx(0.0505), approx(0.001))


def test_step_schedule_ten_steps():
    decay = (0.001 / 0.1) ** (1 / 9)
    lr = lambda epoch: lr_at_epoch(epoch, 0.1, 0.001, 100, "step")  # noqa: E731
    assert lr(0) == approx(0.1) and lr(9) == approx(0.1)
    assert lr(10) == approx(0.1 * decay) and lr(45) == approx(0.1 * decay**4)
    assert lr(99) == approx(0.001)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="cos, step"):
        lr_at_epoch(0, 0.1, 0.001, 10, "linear")
    with pytest.raises(ValueError, match="adam, adamw, sgd"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], "rmsprop", 0.1, 0.9, 0)


def test_optimizers_follow_the_original():
    params = [torch.nn.Parameter(torch.zeros(1))]
    adam = make_optimizer(params, "adam", 1e-3, 0.9, 5e-4)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.9, 0.999)
    assert adam.defaults["weight_decay"] == 5e-4
    sgd = make_optimizer(params, "sgd", 1e-2, 0.9, 5e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9


def test_adamw_decays_the_weights_apart_from_the_gradient_where_adam_adds_an_l2_gradient():
    decayed = {}
    for optimizer_type in ("adam", "adamw"):
        weight = torch.nn.Parameter(torch.full((4,), 2.0))
        optimizer = make_optimizer([weight], optimizer_type, 1e-3, 0.9, 1e-2)
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
        decayed[optimizer_type] = weight.detach()
    torch.testing.assert_close(decayed["adamw"], torch.full((4,), 2.0 * (1 - 1e-3 * 1e-2)))
    torch.testing.assert_close(decayed["adam"], torch.full((4,), 2.0 - 1e-3), atol=1e-6, rtol=0)  # a full Adam step


@pytest.mark.parametrize("optimizer_type, reference", [
    ("adam", lambda params: torch.optim.Adam(params, 1e-3, betas=(0.9, 0.999), weight_decay=5e-4, foreach=False)),
    ("adamw", lambda params: torch.optim.AdamW(params, 1e-3, betas=(0.9, 0.999), weight_decay=5e-4, foreach=False)),
    ("sgd", lambda params: torch.optim.SGD(params, 1e-2, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                           foreach=False)),
])
def test_the_fused_cpu_optimiser_makes_the_per_tensor_loops_updates(optimizer_type, reference):
    torch.manual_seed(0)
    shapes = [(64, 3, 7, 7), (64,), (512, 2048), (1, 512)]
    ours, theirs = ([torch.nn.Parameter(torch.randn(shape)) for shape in shapes] for _ in range(2))
    for a, b in zip(ours, theirs):
        b.data.copy_(a.data)
    fused = make_optimizer(ours, optimizer_type, 1e-2 if optimizer_type == "sgd" else 1e-3, 0.9, 5e-4)
    assert fused.defaults["fused"]
    looped = reference(theirs)
    for _ in range(5):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        looped.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    restored = make_optimizer(theirs, optimizer_type, 1e-3, 0.9, 5e-4)  # a resumed run reads the state back
    restored.load_state_dict(fused.state_dict())
    restored.step()
