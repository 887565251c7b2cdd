import pytest
import torch
import torch.nn.functional as F

from milsdk.errors import ModelConfigError
from milsdk.models import CLAM_MB, CLAM_SB
from milsdk.models.clam import _top_bottom
from milsdk.nn import SmoothTop1SVM


def _batch(bags, fill=0.0):
    n = max(b.shape[0] for b in bags)
    X = torch.full((len(bags), n, bags[0].shape[1]), fill)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        X[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return X, mask


def _plain_inst_loss(model, X, y, inst_loss_name):
    """One unpadded bag, written out: top-k / bottom-k by attention, in-class and out-of-class terms."""
    H = model.feat_ext(X)
    _, f = model(X, return_att=True)
    n = X.shape[1]
    k = min(model.k_sample, n // 2)
    order = torch.argsort(f[0], descending=True)
    top, bottom = H[0, order[:k]], H[0, order[n - k :]]

    def loss(logits, target):
        t = torch.full((logits.shape[0],), target)
        if inst_loss_name == "BCEWithLogitsLoss":
            return F.binary_cross_entropy_with_logits(logits, F.one_hot(t, 2).float())
        return SmoothTop1SVM(2)(logits, t)

    clf = model.inst_classifiers
    loss_in = (loss(clf[y](top), 1) * k + loss(clf[y](bottom), 0) * k) / (2 * k)
    others = [c for c in range(len(clf)) if c != y]
    loss_out = sum(loss(clf[c](top), 0) for c in others) / len(others)
    return loss_in + loss_out


@pytest.mark.parametrize("inst_loss_name", ["SmoothTop1SVM", "BCEWithLogitsLoss"])
@pytest.mark.parametrize("n_classes, y", [(1, 0), (1, 1), (3, 2)])
def test_instance_loss_equals_a_plain_computation(inst_loss_name, n_classes, y):
    torch.manual_seed(0)
    model = CLAM_SB(in_shape=(5,), att_dim=8, k_sample=3, inst_loss_name=inst_loss_name, n_classes=n_classes)
    X = torch.randn(1, 8, 5)
    _, losses = model.compute_loss(torch.tensor([y]), X)
    assert torch.allclose(losses["InstLoss"], _plain_inst_loss(model, X, y, inst_loss_name), atol=1e-6)


@pytest.mark.parametrize("cls, n_classes", [(CLAM_SB, 1), (CLAM_SB, 3), (CLAM_MB, 3)])
def test_instance_loss_only_picks_real_instances(cls, n_classes):
    torch.manual_seed(1)
    model = cls(in_shape=(4,), att_dim=8, k_sample=3, n_classes=n_classes)
    bags = [torch.randn(n, 4) for n in (9, 4, 2)]
    Y = torch.tensor([1, 0, 1]) if n_classes == 1 else torch.tensor([2, 0, 1])
    X, mask = _batch(bags, fill=1e3)  # padding that would dominate attention and loss if it were chosen
    _, losses = model.compute_loss(Y, X, mask.to(torch.uint8))
    alone = [model.compute_loss(Y[i : i + 1], b.unsqueeze(0))[1]["InstLoss"] for i, b in enumerate(bags)]
    assert torch.allclose(losses["InstLoss"], torch.stack(alone).mean(), atol=1e-5)


def test_top_bottom_sets_are_real_disjoint_and_shrink_for_small_bags():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 9.0, 9.0, 9.0]])
    keep = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    top, bottom, valid, k = _top_bottom(scores, keep, k_sample=2)
    assert k.tolist() == [2, 1]  # min(k_sample, n_real // 2)
    assert top[0].tolist() == [0, 1] and bottom[0].tolist() == [5, 4]
    chosen_top, chosen_bottom = top[1][valid[1]], bottom[1][valid[1]]
    assert set(chosen_top.tolist()) | set(chosen_bottom.tolist()) <= {0, 1, 2}  # ties and padding: still real
    assert set(chosen_top.tolist()).isdisjoint(chosen_bottom.tolist())


def test_bags_too_small_for_the_instance_loss_give_zero_not_nan():
    model = CLAM_SB(in_shape=(3,), att_dim=8, k_sample=2)
    X = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, False, False, False], [False] * 4])
    logits, losses = model.compute_loss(torch.tensor([1, 0]), X, mask)
    assert losses["InstLoss"].item() == 0.0 and torch.isfinite(logits).all()
    sum(losses.values()).backward()


@pytest.mark.parametrize("inst_loss_name", ["SmoothTop1SVM", "BCEWithLogitsLoss"])
@pytest.mark.parametrize(
    "cls, n_classes, crit", [(CLAM_SB, 1, "BCEWithLogitsLoss"), (CLAM_SB, 3, "CrossEntropyLoss"),
                              (CLAM_MB, 3, "CrossEntropyLoss")]
)
def test_loss_keys_and_gradients_reach_the_instance_classifiers(cls, n_classes, crit, inst_loss_name):
    model = cls(in_shape=(4,), att_dim=8, k_sample=2, inst_loss_name=inst_loss_name, n_classes=n_classes)
    Y = torch.tensor([1, 0]) if n_classes == 1 else torch.tensor([2, 0])
    logits, losses = model.compute_loss(Y, torch.randn(2, 6, 4))
    assert set(losses) == {crit, "InstLoss"}
    assert logits.shape == ((2,) if n_classes == 1 else (2, 3))
    losses["InstLoss"].backward()
    grads = [p.grad for p in model.inst_classifiers.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_binary_multi_branch_logit_is_the_two_branch_softmax_in_one_logit():
    torch.manual_seed(0)
    model = CLAM_MB(in_shape=(4,)).eval()
    assert model.n_classes == 1 and len(model.inst_classifiers) == 2
    X = torch.randn(3, 6, 4)
    with torch.no_grad():
        logit = model(X)
        H = model.feat_ext(X)
        a = torch.softmax(model.attention(H), dim=1)
        branch = torch.diagonal(model.classifiers(torch.bmm(a.transpose(1, 2), H)), dim1=1, dim2=2)
    assert logit.shape == (3,)
    assert torch.allclose(torch.sigmoid(logit), torch.softmax(branch, dim=1)[:, 1], atol=1e-6)


def test_config_errors():
    with pytest.raises(ModelConfigError, match="inst_loss_name"):
        CLAM_SB(in_shape=(4,), inst_loss_name="hinge")
    with pytest.raises(ModelConfigError, match="k_sample"):
        CLAM_SB(in_shape=(4,), k_sample=0)
    assert len(CLAM_SB(in_shape=(4,)).inst_classifiers) == 2  # {negative, positive} for one output


@pytest.mark.parametrize("cls, n_classes", [(CLAM_SB, 1), (CLAM_MB, 3)])
def test_lazy_model_initialises_everything_at_the_first_forward(cls, n_classes):
    model = cls(att_dim=8, k_sample=2, n_classes=n_classes)
    model(torch.randn(2, 5, 6))
    assert model.config["in_shape"] == (6,)
    assert all(not isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters())
    _, losses = model.compute_loss(torch.tensor([1, 0]), torch.randn(2, 5, 6))
    assert torch.isfinite(losses["InstLoss"])


def test_forward_returns_embeddings_in_the_reference_order():
    model = CLAM_SB(in_shape=(4,), att_dim=8).eval()
    X = torch.randn(2, 5, 4)
    logits, f, H = model(X, return_att=True, return_emb=True)
    assert f.shape == (2, 5) and torch.equal(H, X)
    assert torch.equal(model(X, return_emb=True)[1], X)


def test_multi_branch_attention_is_the_mean_of_padding_invariant_branch_distributions():
    torch.manual_seed(2)
    model = CLAM_MB(in_shape=(4,), att_dim=8, n_classes=3, gated=True).eval()
    bags = [torch.randn(n, 4) for n in (7, 3)]
    X, mask = _batch(bags, fill=50.0)
    logits, att = model(X, mask, return_att=True)
    for i, b in enumerate(bags):
        alone_logits, alone_att = model(b.unsqueeze(0), return_att=True)
        n = b.shape[0]
        assert torch.allclose(logits[i], alone_logits[0], atol=1e-5)
        assert torch.allclose(att[i, :n], alone_att[0], atol=1e-6) and torch.all(att[i, n:] == 0)
        assert att[i].sum().item() == pytest.approx(1.0, abs=1e-6)
    # logit_c uses branch c's pooled vector and classifier row c only
    H = X[:1, :7]
    a = torch.softmax(model.attention(H), dim=1)  # (1, N, C)
    want = torch.stack([(a[0, :, c] @ H[0]) @ model.classifiers.weight[c] + model.classifiers.bias[c]
                        for c in range(3)])
    assert torch.allclose(logits[0], want, atol=1e-5)
    assert torch.allclose(att[0, :7], a[0].mean(-1), atol=1e-6)
