import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.export import DeploymentModule, export_onnx
from milsdk.models import MILModelWrapper, TransMIL, create_model

JIT_DEPRECATED = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
SMALL = dict(att_dim=16, n_heads=2, n_landmarks=6)


def _batch(bags, pad_value=0.0):
    n = max(b.shape[0] for b in bags)
    X = torch.full((len(bags), n, bags[0].shape[1]), pad_value)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        X[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return X, mask


def _bags(sizes, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) for n in sizes]


def test_registered_with_reference_defaults():
    model = create_model("TransMIL", in_shape=(8,))
    cfg = model.config
    assert cfg["att_dim"] == 512 and cfg["n_layers"] == 2 and cfg["n_heads"] == 4 and cfg["n_classes"] == 1
    assert model.n_landmarks == 256 and model.layers[0].att.n_landmarks == 256
    assert TransMIL.attention_output == "weights" and TransMIL.padding_invariant


@pytest.mark.parametrize("n_classes", [1, 3])
def test_padded_bag_gives_same_logits_and_attention_as_alone(n_classes):
    torch.manual_seed(0)
    model = TransMIL(in_shape=(10,), n_classes=n_classes, **SMALL).eval()
    bags = _bags([50, 17, 16, 5, 2, 1], 10)  # perfect squares, fillers, one instance
    X, mask = _batch(bags, pad_value=123.0)  # padding content must not matter
    with torch.no_grad():
        logits, att = model(X, mask, return_att=True)
        for i, bag in enumerate(bags):
            alone_logits, alone_att = model(bag.unsqueeze(0), return_att=True)
            n = bag.shape[0]
            assert (logits[i] - alone_logits[0]).abs().max() <= 1e-5
            assert (att[i, :n] - alone_att[0]).abs().max() <= 1e-5
            assert (att[i, n:] == 0).all()
    assert logits.shape == ((6,) if n_classes == 1 else (6, n_classes)) and att.shape == mask.shape


def test_attention_weights_are_non_negative_and_renormalisable():
    torch.manual_seed(0)
    model = TransMIL(in_shape=(6,), **SMALL).eval()
    X, mask = _batch(_bags([30, 7, 1], 6))
    with torch.no_grad():
        _, att = model(X, mask, return_att=True)
    assert torch.isfinite(att).all() and (att >= 0).all()
    assert (att.sum(1) > 0).all()
    s = model.deployment_attention(att, mask)
    assert torch.allclose(s.sum(1), torch.ones(3)) and (s[~mask] == 0).all()


def test_filler_copy_attention_is_added_to_its_instance():
    # A bag of 2 becomes tokens [x0, x1, x0, x1]; the bag [x0, x1, x0, x1] of 4 instances has the same tokens,
    # so instance i of the small bag must get the attention of instances i and i + 2 of the big one.
    torch.manual_seed(0)
    model = TransMIL(in_shape=(5,), **SMALL).eval()
    x = torch.randn(1, 2, 5)
    with torch.no_grad():
        logits2, att2 = model(x, return_att=True)
        logits4, att4 = model(torch.cat([x, x], dim=1), return_att=True)
    assert (logits2 - logits4).abs().max() <= 1e-5
    assert (att2 - (att4[:, :2] + att4[:, 2:])).abs().max() <= 1e-5


def test_mask_with_holes_equals_compacted_bag_and_uint8_equals_bool():
    torch.manual_seed(0)
    model = TransMIL(in_shape=(4,), **SMALL).eval()
    X = torch.randn(2, 12, 4)
    keep = torch.rand(2, 12) > 0.4
    keep[:, 0] = True
    with torch.no_grad():
        logits, att = model(X, keep, return_att=True)
        logits_u8, att_u8 = model(X, keep.to(torch.uint8), return_att=True)
        assert torch.equal(logits, logits_u8) and torch.equal(att, att_u8)
        for b in range(2):
            alone_logits, alone_att = model(X[b : b + 1, keep[b]], return_att=True)
            assert (logits[b] - alone_logits[0]).abs().max() <= 1e-5
            assert (att[b, keep[b]] - alone_att[0]).abs().max() <= 1e-5
            assert (att[b, ~keep[b]] == 0).all()


def test_one_instance_and_all_masked_bags_are_finite():
    torch.manual_seed(0)
    model = TransMIL(in_shape=(4,), **SMALL)
    X, mask = _batch(_bags([6, 1], 4))
    X, mask = torch.cat([X, torch.randn(1, 6, 4)]), torch.cat([mask, torch.zeros(1, 6, dtype=torch.bool)])
    logits, att = model(X, mask, return_att=True)
    assert torch.isfinite(logits).all() and torch.isfinite(att).all()
    assert (att[2] == 0).all() and att[1, 0] > 0
    logits[:2].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert (model(X[:2], mask[:2]) - logits[:2]).abs().max() <= 1e-5  # the empty bag changes nothing


def test_compute_loss_keys_predict_and_wrapper():
    torch.manual_seed(0)
    X, mask = _batch(_bags([5, 3], 4))
    binary = TransMIL(in_shape=(4,), **SMALL)
    logits, losses = binary.compute_loss(torch.tensor([1, 0]), X, mask)
    assert list(losses) == ["BCEWithLogitsLoss"] and logits.shape == (2,)
    multi = TransMIL(in_shape=(4,), n_classes=3, **SMALL)
    logits, losses = multi.compute_loss(torch.tensor([2, 0]), X, mask)
    assert list(losses) == ["CrossEntropyLoss"] and logits.shape == (2, 3)
    logits, inst = multi.predict(X, mask)
    assert inst.shape == (2, 5)
    wrapped_logits, _ = MILModelWrapper(multi).compute_loss({"X": X, "Y": torch.tensor([2, 0]), "mask": mask})
    assert torch.allclose(wrapped_logits, logits, atol=1e-6)


def test_invalid_configuration_raises():
    with pytest.raises(ModelConfigError, match="n_layers"):
        TransMIL(in_shape=(4,), n_layers=1)
    with pytest.raises(ModelConfigError, match="n_heads"):
        TransMIL(in_shape=(4,), att_dim=10, n_heads=4)
    with pytest.raises(ModelConfigError):
        TransMIL(in_shape=(4,), n_classes=1, criterion=torch.nn.CrossEntropyLoss())


def test_torchmil_options_default_off_and_checked():
    model = TransMIL(in_shape=(16,), **SMALL)
    assert model.embed == "linear_relu" and all(layer.att.landmarks == "segments" for layer in model.layers)
    same = TransMIL(in_shape=(16,), embed="linear_or_identity", landmarks="torchmil", **SMALL)
    assert isinstance(same.fc1, torch.nn.Identity)  # feature size = att_dim: torchmil has no fc1
    assert all(layer.att.landmarks == "torchmil" for layer in same.layers)
    other = TransMIL(in_shape=(8,), embed="linear_or_identity", **SMALL)
    X = torch.randn(1, 5, 8)
    assert torch.equal(other.fc1(X), torch.nn.functional.linear(X, other.fc1.weight, other.fc1.bias))
    with pytest.raises(ModelConfigError, match="embed='relu'"):
        TransMIL(in_shape=(4,), embed="relu")
    with pytest.raises(ModelConfigError, match="landmarks='ref'"):
        TransMIL(in_shape=(4,), landmarks="ref")


def test_torchmil_landmarks_padded_bag_gives_same_logits_and_attention_as_alone():
    torch.manual_seed(0)
    model = TransMIL(in_shape=(8,), embed="linear_or_identity", landmarks="torchmil", **SMALL).eval()
    bags = _bags([1, 7, 30], 8, seed=3)
    X, mask = _batch(bags)
    with torch.no_grad():
        logits, att = model(X, mask, return_att=True)
        for i, b in enumerate(bags):
            alone, att_alone = model(b.unsqueeze(0), return_att=True)
            assert (logits[i] - alone[0]).abs() <= 1e-5
            assert (att[i, : b.shape[0]] - att_alone[0]).abs().max() <= 1e-5


def test_lazy_in_shape_and_more_layers():
    model = TransMIL(n_layers=3, use_mlp=True, dropout=0.1, **SMALL)
    logits = model(torch.randn(2, 7, 9))
    assert logits.shape == (2,) and model.config["in_shape"] == (9,) and len(model.layers) == 3


def test_training_reduces_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(4, 20, (24,), generator=g).tolist()
    Y = torch.tensor([i % 2 for i in range(24)])
    bags = []
    for n, y in zip(sizes, Y.tolist()):
        bag = torch.randn(n, 8, generator=g)
        if y:  # positive bags hold one instance with a shifted first feature
            bag[int(torch.randint(n, (1,), generator=g)), 0] += 4.0
        bags.append(bag)
    X, mask = _batch(bags)
    model = TransMIL(in_shape=(8,), **SMALL)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        _, loss = model.compute_loss(Y, X, mask)
        loss["BCEWithLogitsLoss"].backward()
        optimizer.step()
        losses.append(loss["BCEWithLogitsLoss"].item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_matches_eager_at_other_sizes():
    torch.manual_seed(0)
    model = TransMIL(in_shape=(6,), n_classes=2, **SMALL).eval()
    scripted = torch.jit.script(model)
    for sizes in ([37, 9, 1], [5], [64, 63], [2, 1, 1]):
        X, mask = _batch(_bags(sizes, 6))
        with torch.no_grad():
            logits, att = scripted(X, mask, True)
            ref_logits, ref_att = model(X, mask, return_att=True)
            assert (logits - ref_logits).abs().max() <= 1e-5 and (att - ref_att).abs().max() <= 1e-5
            assert (scripted(X, mask.to(torch.uint8)) - ref_logits).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory):
    """The default TransMIL (att_dim 512, 256 landmarks) at D=1024, exported once by milsdk at B=2, N=37."""
    torch.manual_seed(0)
    model = TransMIL(in_shape=(1024,)).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("transmil") / "model.onnx", example_instances=37)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # layer 1: landmark sums, values, rows; layer 2 (only the class row is read): sums and values, no rows
    assert sum(node.op_type == "Scan" for node in onnx.load(str(path)).graph.node) == 5
    return model, session


@pytest.mark.filterwarnings("ignore")
def test_onnx_export_is_right_at_other_batch_and_bag_sizes(default_onnx):
    model, session = default_onnx
    assert [i.shape for i in session.get_inputs()] == [["batch", "n_instances", 1024], ["batch", "n_instances"]]
    rng = np.random.default_rng(0)
    for B in (1, 3):
        for N in (1, 5, 64, 1000, 5000):
            features = rng.standard_normal((B, N, 1024)).astype(np.float32)
            mask = np.zeros((B, N), dtype=bool)
            for b, n in enumerate([N, max(1, N // 3), max(1, N // 7)][:B]):  # mixed padding
                mask[b, :n] = True
            logits, att = session.run(["logits", "attention"], {"features": features, "mask": mask})
            with torch.no_grad():
                X, keep = torch.from_numpy(features), torch.from_numpy(mask)
                ref_logits, ref_att = DeploymentModule(model)(X, keep)
            assert logits.shape == (B, 1) and att.shape == (B, N)
            assert np.abs(logits - ref_logits.numpy()).max() <= 1e-4, (B, N)
            assert np.abs(att - ref_att.numpy()).max() <= 1e-4, (B, N)


def test_attention_of_a_trained_model_is_a_distribution_at_every_size():
    """Issue 13, point 6: after 8 Adam steps (lr 1e-3, D = 1024, bags of 1-200) the Nyström class row was all
    negative for a 500-instance bag and the clamped attention all zero. The exported attention is now the exact
    class-token softmax row."""
    from milsdk.export.signature import DeploymentModule

    torch.manual_seed(0)
    model = TransMIL(in_shape=(1024,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(8):
        n = int(torch.randint(1, 201, ()))
        _, losses = model.compute_loss(torch.randint(0, 2, (1,)).float(), torch.randn(1, n, 1024))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    module = DeploymentModule(model.eval())
    sizes = list(range(1, 65)) + [65, 129, 500, 1000, 3000]
    with torch.no_grad():
        for n in sizes:
            _, att = module(torch.randn(1, n, 1024), torch.ones(1, n, dtype=torch.bool))
            assert abs(float(att.double().sum()) - 1) <= 1e-5 and bool((att > 0).all()), n
