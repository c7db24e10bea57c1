"""Weight conversion: the round trip is bit-exact, the specs are read off the weights, and bad
checkpoints get one error that lists every problem, with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx
from helpers.reference import nchw, perturb

import p2c_jax
from p2c_jax import inference
from p2c_jax.cli.convert import main
from p2c_jax.nn.models import NetSpec
from p2c_jax.pytorch import nets as torch_port
from p2c_jax.weights.convert import CheckpointError, load_torch


def _six_nets(ch: int = 4, img_size: int = 32, light: bool = True) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "genA2B": perturb(torch_port.ResnetGenerator(ch, img_size, light), 1),
        "genB2A": perturb(torch_port.ResnetGenerator(ch, img_size, light), 2),
        "disGA": perturb(torch_port.Discriminator(3, ch, 7), 3),
        "disGB": perturb(torch_port.Discriminator(3, ch, 7), 4),
        "disLA": perturb(torch_port.Discriminator(3, ch, 5), 5),
        "disLB": perturb(torch_port.Discriminator(3, ch, 5), 6),
    }


@pytest.fixture(scope="module")
def weights_pt(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt") / "photo2cartoon_weights.pt"
    torch.save({k: m.state_dict() for k, m in _six_nets().items()}, path)
    return path


def _assert_same_file(a, b):
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    for net in sa:
        sda, sdb = (sa[net], sb[net]) if isinstance(sa[net], dict) else (sa, sb)
        # the same keys; written in our order, which strict load_state_dict ignores
        assert sorted(sda) == sorted(sdb), net
        for k in sda:
            assert sda[k].dtype == sdb[k].dtype, (net, k)
            assert torch.equal(sda[k], sdb[k]), (net, k)
        if not isinstance(sa[net], dict):
            break


def test_round_trip_six_nets_bit_exact(weights_pt, tmp_path, capsys):
    ours, back = tmp_path / "ours", tmp_path / "back.pt"
    assert main(["--src", str(weights_pt), "--dst", str(ours)]) == 0
    assert main(["--src", str(ours), "--dst", str(back)]) == 0
    _assert_same_file(weights_pt, back)
    # the original modules load it strictly
    sd = torch.load(back, weights_only=True)
    torch_port.ResnetGenerator(4, 32, True).load_state_dict(sd["genA2B"], strict=True)
    torch_port.Discriminator(3, 4, 7).load_state_dict(sd["disGB"], strict=True)
    torch_port.Discriminator(3, 4, 5).load_state_dict(sd["disLA"], strict=True)
    assert "genA2B (generator)" in capsys.readouterr().out


def test_round_trip_full_generator_and_mobilefacenet(tmp_path):
    torch.manual_seed(1)
    gen = perturb(torch_port.ResnetGenerator(4, 48, light=False), 1)
    torch.save({"genA2B": gen.state_dict()}, tmp_path / "full.pt")
    face = perturb(torch_port.MobileFaceNet(512), 2)
    torch.save(face.state_dict(), tmp_path / "model_mobilefacenet.pth")
    for name in ("full.pt", "model_mobilefacenet.pth"):
        assert main(["--src", str(tmp_path / name), "--dst", str(tmp_path / f"{name}.ours")]) == 0
        assert (
            main(["--src", str(tmp_path / f"{name}.ours"), "--dst", str(tmp_path / f"back_{name}")])
            == 0
        )
        _assert_same_file(tmp_path / name, tmp_path / f"back_{name}")
    assert torch.load(tmp_path / "back_model_mobilefacenet.pth")["bn.num_batches_tracked"] == 1234


def test_specs_read_off_the_weights(weights_pt, tmp_path):
    weights = load_torch(weights_pt)
    assert weights["genA2B"][0] == NetSpec("generator", 4, img_size=256, light=True)
    assert weights["disGA"][0] == NetSpec("discriminator", 4, n_layers=7)
    assert weights["disLB"][0] == NetSpec("discriminator", 4, n_layers=5)
    torch.save(
        {"genB2A": torch_port.ResnetGenerator(8, 80, light=False).state_dict()},
        tmp_path / "full.pt",
    )
    assert load_torch(tmp_path / "full.pt")["genB2A"][0] == NetSpec(
        "generator", 8, img_size=80, light=False
    )
    torch.save(torch_port.MobileFaceNet(128).state_dict(), tmp_path / "face.pth")
    assert load_torch(tmp_path / "face.pth")["facenet"][0] == NetSpec("mobilefacenet", 128)


def test_subset_is_reported(tmp_path):
    torch.save({"genA2B": torch_port.ResnetGenerator(4, 32, True).state_dict()}, tmp_path / "g.pt")
    logs = []
    weights = load_torch(tmp_path / "g.pt", log=logs.append)
    assert list(weights) == ["genA2B"]
    assert "found genA2B; missing genB2A, disGA, disGB, disLA, disLB" in logs[0]
    with pytest.raises(CheckpointError, match=r"has no genB2A \(it holds genA2B\)"):
        load_torch(tmp_path / "g.pt", ["genB2A"])


def test_every_problem_listed_and_nothing_written(tmp_path, capsys):
    sd = torch_port.ResnetGenerator(4, 32, True).state_dict()
    del sd["gap_fc.bias"]
    del sd["DecodeBlock2.norm1.w_beta"]
    sd["extra.weight"] = torch.zeros(3)
    sd["conv1x1.weight"] = torch.zeros(16, 33, 1, 1)
    dis = torch_port.Discriminator(3, 4, 5).state_dict()
    dis["model.4.weight_u"] = torch.zeros(7)
    torch.save({"genA2B": sd, "disLA": dis}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_torch(tmp_path / "bad.pt")
    msg = str(err.value)
    for part in (
        "genA2B: missing key gap_fc.bias (expected shape (1,))",
        "genA2B: missing key DecodeBlock2.norm1.w_beta (expected shape (1, 16))",
        "genA2B: unexpected key extra.weight",
        "genA2B: conv1x1.weight has shape (16, 33, 1, 1), expected (16, 32, 1, 1)",
        "disLA: model.4.weight_u has shape (7,), expected (8,)",
    ):
        assert part in msg
    assert main(["--src", str(tmp_path / "bad.pt"), "--dst", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    assert "bad.pt" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content,match",
    [
        (b"hello, not a checkpoint", "not a PyTorch checkpoint"),
        (None, "not a PyTorch checkpoint of state_dicts"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "x.pt"
    if content is None:
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_torch(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_torch(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a p2c-jax checkpoint"):
        p2c_jax.load_generator(tmp_path)


def test_export_needs_pt_and_new_dst(weights_pt, tmp_path):
    ours = tmp_path / "ours"
    assert main(["--src", str(weights_pt), "--dst", str(ours)]) == 0
    assert main(["--src", str(ours), "--dst", str(tmp_path / "x.npz")]) == 2
    assert main(["--src", str(weights_pt), "--dst", str(ours)]) == 2  # exists already
    assert not (tmp_path / "x.npz").exists()


def test_load_generator_from_pt_and_checkpoint(weights_pt, tmp_path):
    ours = tmp_path / "ours"
    assert main(["--src", str(weights_pt), "--dst", str(ours)]) == 0
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    ref = _six_nets()["genB2A"]
    with torch.no_grad():
        want = ref(nchw(x))
    gens = [p2c_jax.load_generator(path, net="genB2A") for path in (weights_pt, ours)]
    forward = inference.forward(gens[0].spec)
    assert inference.forward(gens[1].spec) is forward  # one spec, one compiled forward pass
    compiled = forward._cache_size()
    for gen in gens:
        image, cam_logit, heatmap = gen(x)
        assert image.shape == (2, 32, 32, 3) and cam_logit.shape == (2, 2)
        assert heatmap.shape == (2, 8, 8, 1)
        np.testing.assert_allclose(
            np.asarray(image), want[0].numpy().transpose(0, 2, 3, 1), atol=1e-4
        )
        gen(x + 0.1)
    assert forward._cache_size() == compiled + 1  # one compilation per spec and shape
    gens[0](x[:1])  # each net compiles a new shape into the shared forward pass
    assert forward._cache_size() == compiled + 2
    gens[1](np.concatenate([x, x[:1]]))
    assert forward._cache_size() == compiled + 3
    with pytest.raises(CheckpointError, match="disGA is a discriminator"):
        p2c_jax.load_generator(weights_pt, net="disGA")


def test_load_face_embedder(tmp_path):
    torch.manual_seed(2)
    face = perturb(torch_port.MobileFaceNet(512), 2)
    torch.save(face.state_dict(), tmp_path / "model_mobilefacenet.pth")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 112, 112, 3)).astype(np.float32)
    with torch.no_grad():
        want = face(nchw(x)).numpy()
    emb = p2c_jax.load_face_embedder(tmp_path / "model_mobilefacenet.pth")
    np.testing.assert_allclose(np.asarray(emb(x)), want, atol=1e-5)


def test_other_float_dtypes_converted_with_a_warning_ints_refused(tmp_path):
    """A float64 (or float16) file is read into our float32 nets with a warning naming the
    tensors; a tensor of a non-float dtype where a float one belongs is refused."""
    sd = torch_port.Discriminator(3, 4, 5).state_dict()
    torch.save({"disLA": {k: v.double() for k, v in sd.items()}}, tmp_path / "f64.pt")
    with pytest.warns(UserWarning, match=r"converted \(float64, converted to float32\)"):
        weights = load_torch(tmp_path / "f64.pt")
    state = weights["disLA"][1]
    assert all(v[...].dtype == np.float32 for _, v in nnx.to_flat_state(state))
    key = next(k for k in sd if k.endswith("weight_orig"))
    torch.save({"disLA": {**sd, key: sd[key].to(torch.int32)}}, tmp_path / "int.pt")
    with pytest.raises(CheckpointError, match=f"{key} has dtype int32, expected float32"):
        load_torch(tmp_path / "int.pt")
