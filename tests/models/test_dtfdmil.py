import numpy as np
import pytest
import torch

from milsdk.errors import ModelConfigError
from milsdk.models import DTFDMIL, create_model
from milsdk.models.dtfdmil import pseudo_bag_groups

MODES = ["maxmin", "max", "afs"]
TORCHMIL = {"pseudo_bag_split": "array_split", "distill_instances": "all"}  # what the torchmil conversion sets
OPTIONS = [{}, TORCHMIL]


def _batch(bags, pad_value=0.0):
    n = max(b.shape[0] for b in bags)
    X = torch.full((len(bags), n, bags[0].shape[1]), pad_value)
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        X[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return X, mask


def _by_hand(model, bag):
    """Eval-mode DTFD-MIL on one bag of real instances, one pseudo-bag at a time (plain loops, no masks);
    with the torchmil options as torchmil computes it: np.array_split, every instance distilled (twice in maxmin)."""
    n, G = bag.shape[0], min(model.n_groups, bag.shape[0])
    if model.pseudo_bag_split == "array_split":
        chunks = [bag[torch.as_tensor(c)] for c in np.array_split(np.arange(n), G)]
    else:
        chunks = [bag[[r for r in range(n) if r * G // n == g]] for g in range(G)]
    W = model.classifier.weight  # (C, D)
    distilled = []
    for chunk in chunks:
        z = model.attention_pool(chunk.unsqueeze(0))[0]
        pseudo = model.classifier(z)
        score = chunk @ W[pseudo.argmax()]  # CAM of the pseudo-bag's class
        if model.distill_mode == "afs":
            distilled.append(z.unsqueeze(0))
        elif model.distill_instances == "all":
            distilled.append(torch.cat([chunk, chunk]) if model.distill_mode == "maxmin" else chunk)
        elif model.distill_mode == "max":
            distilled.append(chunk[score.argmax()].unsqueeze(0))
        else:
            distilled.append(chunk[torch.stack([score.argmax(), score.argmin()])])
    z2 = model.u_attention_pool(torch.cat(distilled).unsqueeze(0))[0]
    return model.u_classifier(z2)


def test_eval_split_is_contiguous_balanced_and_ignores_padding():
    holes = [True, False, True, True, False, False, True, False, False, False]
    keep = torch.tensor([[True] * 7 + [False] * 3, holes])
    member, valid = pseudo_bag_groups(keep, 3, shuffle=False)
    group = (member.long() * torch.arange(3).reshape(1, 3, 1)).sum(1)
    assert (member.sum(1) == keep.long()).all()  # each real instance in one pseudo-bag, padding in none
    assert group[0, :7].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert group[1, keep[1]].tolist() == [0, 0, 1, 2]  # holes in the mask: real instances in their order
    assert valid.tolist() == [[True, True, True], [True, True, True]]
    member, valid = pseudo_bag_groups(torch.tensor([[True, True, False], [False, False, False]]), 3, False)
    assert valid.tolist() == [[True, True, False], [False, False, False]] and member[1].sum() == 0


def test_training_split_is_a_random_balanced_partition_driven_by_torch_seed():
    keep = torch.ones(1, 20, dtype=torch.bool)
    keep[0, 15:] = False
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        member, _ = pseudo_bag_groups(keep, 4, shuffle=True)
        assert (member.sum(1) == keep.long()).all() and member.sum(2).tolist() == [[4, 4, 4, 3]]
        draws.append(member)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_array_split_sizes_are_numpys_per_bag_whatever_the_padding():
    for G in range(1, 7):
        for n in range(0, 30):
            keep = torch.zeros(2, 40, dtype=torch.bool)
            keep[0, :n] = True
            keep[1, torch.randperm(40, generator=torch.Generator().manual_seed(n))[:n]] = True  # holes
            member, valid = pseudo_bag_groups(keep, G, shuffle=False, split="array_split")
            want = [c.tolist() for c in np.array_split(np.arange(n), min(n, G))] if n else []
            for b in range(2):
                real = torch.nonzero(keep[b]).flatten()
                got = [torch.nonzero(member[b, g, real]).flatten().tolist() for g in range(G) if valid[b, g]]
                assert got == want, (G, n, b)
    proportional, _ = pseudo_bag_groups(torch.ones(1, 8, dtype=torch.bool), 5, shuffle=False)
    assert proportional.sum(2).tolist() == [[2, 2, 1, 2, 1]]  # np.array_split: 2, 2, 2, 1, 1
    torch.manual_seed(0)
    member, _ = pseudo_bag_groups(torch.ones(1, 8, dtype=torch.bool), 5, shuffle=True, split="array_split")
    assert member.sum(2).tolist() == [[2, 2, 2, 1, 1]] and (member.sum(1) == 1).all()


@pytest.mark.parametrize("options", OPTIONS, ids=["default", "torchmil"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_classes", [1, 3])
def test_each_distill_mode_matches_a_per_pseudo_bag_computation_and_is_padding_invariant(mode, n_classes, options):
    torch.manual_seed(0)
    model = DTFDMIL(in_shape=(5,), att_dim=8, n_groups=5, distill_mode=mode, n_classes=n_classes, **options).eval()
    bags = [torch.randn(n, 5) for n in (11, 8, 4, 2, 1)]
    X, mask = _batch(bags, pad_value=-40.0)
    with torch.no_grad():
        for m in (mask, mask.to(torch.uint8)):
            logits, att = model(X, m, return_att=True)
            for i, bag in enumerate(bags):
                want = _by_hand(model, bag).squeeze()
                alone_logits, alone_att = model(bag.unsqueeze(0), return_att=True)
                assert (logits[i] - want).abs().max() <= 1e-5
                assert (logits[i] - alone_logits[0]).abs().max() <= 1e-5
                assert (att[i, : bag.shape[0]] - alone_att[0]).abs().max() <= 1e-5
            s = model.deployment_attention(att, m)
            assert torch.allclose(s.sum(1), torch.ones(5), atol=1e-6) and (s[~mask] == 0).all()
        assert torch.equal(model(X, mask), model(X, mask))


@pytest.mark.parametrize("mode", MODES)
def test_mask_none_works_in_every_mode(mode):
    model = DTFDMIL(in_shape=(4,), att_dim=8, n_groups=3, distill_mode=mode).eval()
    X = torch.randn(2, 7, 4)
    assert torch.equal(model(X), model(X, torch.ones(2, 7, dtype=torch.bool)))


def test_training_forward_changes_with_the_seed_and_repeats_with_it():
    model = DTFDMIL(in_shape=(4,), att_dim=8, n_groups=3).train()
    X = torch.randn(3, 30, 4)
    outs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        outs.append(model(X))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])


def test_attention_is_the_tier1_cam_of_the_predicted_class():
    torch.manual_seed(0)
    for n_classes in (1, 3):
        model = DTFDMIL(in_shape=(4,), att_dim=8, n_groups=3, n_classes=n_classes).eval()
        X = torch.randn(2, 6, 4)
        with torch.no_grad():
            logits, att = model(X, return_att=True)
            cam = X @ model.classifier.weight.T  # (B, N, C)
            cls = torch.zeros(2, dtype=torch.long) if n_classes == 1 else logits.argmax(-1)
            assert torch.allclose(att, cam[torch.arange(2), :, cls], atol=1e-6)
        assert DTFDMIL.attention_output == "logits"


def test_losses_are_named_by_tier_and_cover_only_existing_pseudo_bags():
    torch.manual_seed(0)
    model = DTFDMIL(in_shape=(4,), att_dim=8, n_groups=3)
    X, mask = _batch([torch.randn(9, 4), torch.randn(2, 4)])
    Y = torch.tensor([1, 0])
    torch.manual_seed(3)
    logits, losses = model.compute_loss(Y, X, mask)
    torch.manual_seed(3)
    _, pseudo = model(X, mask, return_pseudo_pred=True)
    assert pseudo.shape == (2, 3) and pseudo[1, 2] == 0  # the 2-instance bag has 2 pseudo-bags
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    existing = torch.cat([pseudo[0], pseudo[1, :2]])
    assert sorted(losses) == ["BCEWithLogitsLoss_t1", "BCEWithLogitsLoss_t2"]
    assert torch.allclose(losses["BCEWithLogitsLoss_t1"], bce(existing, torch.tensor([1.0] * 3 + [0.0] * 2)))
    assert torch.allclose(losses["BCEWithLogitsLoss_t2"], bce(logits, Y.float()))
    model3 = DTFDMIL(in_shape=(4,), att_dim=8, n_groups=3, n_classes=3)
    _, losses3 = model3.compute_loss(torch.tensor([2, 0]), X, mask)
    assert sorted(losses3) == ["CrossEntropyLoss_t1", "CrossEntropyLoss_t2"]


@pytest.mark.parametrize("options", OPTIONS, ids=["default", "torchmil"])
def test_empty_and_one_instance_bags_are_finite(options):
    for mode in MODES:
        model = DTFDMIL(in_shape=(4,), att_dim=8, n_groups=3, distill_mode=mode, n_classes=3, **options).eval()
        X = torch.randn(2, 3, 4)
        mask = torch.tensor([[False, False, False], [True, False, False]])
        logits, att = model(X, mask, return_att=True)
        s = model.deployment_attention(att, mask)
        assert torch.isfinite(logits).all() and torch.isfinite(s).all()
        assert (s[0] == 0).all() and torch.allclose(s[1], torch.tensor([1.0, 0.0, 0.0]))


def test_reference_defaults_lazy_in_shape_and_clear_errors():
    model = create_model("DTFDMIL")
    cfg = model.config
    assert cfg["att_dim"] == 128 and cfg["n_groups"] == 8 and cfg["distill_mode"] == "maxmin"
    assert model(torch.randn(2, 5, 7)).shape == (2,) and model.in_shape == (7,)
    with pytest.raises(ModelConfigError, match="distill_mode"):
        DTFDMIL(distill_mode="MaxMinS")
    with pytest.raises(ModelConfigError, match="n_groups"):
        DTFDMIL(n_groups=0)
    with pytest.raises(ModelConfigError, match=r"pseudo_bag_split must be one of \('proportional', 'array_split'\)"):
        DTFDMIL(pseudo_bag_split="numpy")
    with pytest.raises(ModelConfigError, match=r"distill_instances must be one of \('one', 'all'\), got 'two'"):
        DTFDMIL(distill_instances="two")
    assert cfg["pseudo_bag_split"] == "proportional" and cfg["distill_instances"] == "one"
    with pytest.raises(ValueError, match="cannot both be set"):
        DTFDMIL(in_shape=(3,))(torch.randn(1, 2, 3), return_att=True, return_pseudo_pred=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("options", OPTIONS, ids=["default", "torchmil"])
@pytest.mark.parametrize("mode", MODES)
def test_scripted_model_matches_eager(mode, options):
    model = DTFDMIL(in_shape=(4,), att_dim=8, n_groups=3, distill_mode=mode, **options).eval()
    scripted = torch.jit.script(model)
    X, mask = _batch([torch.randn(8, 4), torch.randn(3, 4)])
    got, got_att = scripted(X, mask, return_att=True)
    want, want_att = model(X, mask, return_att=True)
    assert torch.allclose(got, want, atol=1e-6) and torch.allclose(got_att, want_att, atol=1e-6)
