"""Every deliberate difference between milsdk and torchmil 1.0.2, with its reason: the one list that the parity
test (tests/compat/test_torchmil_parity.py) reads. A name that differs from torchmil passes only if it is listed
here; a listed name that no longer differs fails the test, so the list stays exact.

- ``ABSENT``: torchmil names that milsdk does not provide at torchmil's path (dotted milsdk path -> reason).
- ``SIGNATURE``: signatures that cannot take every torchmil call (``<path>.__init__`` / ``.forward`` / a
  function's path -> reason). See ``milsdk.compat.parity`` for the comparison rules.
- ``BEHAVIOUR``: names with the same signature whose results differ on purpose (checked by the behaviour tests
  of the parity suite, which assert the stated difference).
"""

from __future__ import annotations

__all__ = ["ABSENT", "BEHAVIOUR", "SIGNATURE", "all_differences"]

_MODEL_INIT = (
    "feat_ext=None (Identity) and criterion=None (BCEWithLogitsLoss for n_classes=1, CrossEntropyLoss for C > 1): "
    "a module as a default value would be one object shared by every model built; n_classes is appended last"
)
_MODEL_FORWARD = (
    "the deployment contract: forward(X, mask, <extra inputs>, return_att=False, ...) for every model, so that "
    "one export wrapper and one serving signature fit all models; torchmil's other flags stay as keywords"
)
_BAG_KEYS = (
    "bag_keys=None means every key the dataset can provide (torchmil's list default is a mutable default "
    "shared by every instance); pass torchmil's list to get exactly its keys"
)
_STRICT_ARGS = (
    "milsdk's schedulers take no *args / **kwargs: torchmil ignores unknown arguments silently, milsdk rejects "
    "them so that a misspelt option is an error"
)

ABSENT: dict[str, str] = {
}

SIGNATURE: dict[str, str] = {
    "milsdk.models.abmil.ABMIL.__init__": _MODEL_INIT,
    "milsdk.models.transformer_abmil.TransformerABMIL.__init__": _MODEL_INIT,
    "milsdk.models.sm_abmil.SmABMIL.__init__": _MODEL_INIT,
    "milsdk.models.sm_transformer_abmil.SmTransformerABMIL.__init__": _MODEL_INIT,
    "milsdk.models.prob_smooth_abmil.ProbSmoothABMIL.__init__": _MODEL_INIT,
    "milsdk.models.prob_smooth_abmil.SmoothABMIL.__init__": _MODEL_INIT,
    "milsdk.models.transformer_prob_smooth_abmil.TransformerProbSmoothABMIL.__init__": _MODEL_INIT,
    "milsdk.models.clam.CLAM_SB.__init__": _MODEL_INIT,
    "milsdk.models.dsmil.DSMIL.__init__": _MODEL_INIT,
    "milsdk.models.dtfdmil.DTFDMIL.__init__": _MODEL_INIT,
    "milsdk.models.patch_gcn.PatchGCN.__init__": _MODEL_INIT,
    "milsdk.models.deepgraphsurv.DeepGraphSurv.__init__": _MODEL_INIT,
    "milsdk.models.transmil.TransMIL.__init__": _MODEL_INIT,
    "milsdk.models.camil.CAMIL.__init__": _MODEL_INIT,
    "milsdk.models.iibmil.IIBMIL.__init__": _MODEL_INIT,
    "milsdk.models.setmil.SETMIL.__init__": _MODEL_INIT,
    "milsdk.models.gtp.GTP.__init__": _MODEL_INIT,
    "milsdk.models.vaeabmil.VAEABMIL.__init__": _MODEL_INIT,
    "milsdk.models.dtfdmil.DTFDMIL.forward": _MODEL_FORWARD,
    "milsdk.models.gtp.GTP.forward": _MODEL_FORWARD,
    "milsdk.models.iibmil.IIBMIL.forward": _MODEL_FORWARD,
    "milsdk.models.prob_smooth_abmil.ProbSmoothABMIL.forward": _MODEL_FORWARD,
    "milsdk.models.prob_smooth_abmil.SmoothABMIL.forward": _MODEL_FORWARD,
    "milsdk.models.setmil.SETMIL.forward": _MODEL_FORWARD,
    "milsdk.models.transformer_prob_smooth_abmil.TransformerProbSmoothABMIL.forward": _MODEL_FORWARD,
    "milsdk.models.transmil.TransMIL.forward": _MODEL_FORWARD,
    "milsdk.models.vaeabmil.VAEABMIL.forward": _MODEL_FORWARD,
    "milsdk.datasets.processed_mil_dataset.ProcessedMILDataset.__init__": _BAG_KEYS,
    "milsdk.datasets.trident_wsi_dataset.TridentWSIDataset.__init__": _BAG_KEYS,
    "milsdk.datasets.binary_classification_dataset.BinaryClassificationDataset.__init__": _BAG_KEYS,
    "milsdk.datasets.camelyon16mil_dataset.CAMELYON16MILDataset.__init__": _BAG_KEYS,
    "milsdk.datasets.pandamil_dataset.PANDAMILDataset.__init__": _BAG_KEYS,
    "milsdk.datasets.rsnamil_dataset.RSNAMILDataset.__init__": _BAG_KEYS,
    "milsdk.datasets.tadmil_dataset.TADMILDataset.__init__": _BAG_KEYS,
    "milsdk.datasets.ctscan_dataset.CTScanDataset.__init__": _BAG_KEYS,
    "milsdk.datasets.video_classification_dataset.VideoClassificationDataset.__init__": _BAG_KEYS,
    "milsdk.models.mil_model.MILModel.forward": (
        "the base class's forward is abstract in both; milsdk's is torch.nn.Module's (no *args / **kwargs "
        "placeholder), every model defines forward(X, mask, ...)"
    ),
    "milsdk.models.setmil.PMF.forward": (
        "PMF runs on each bag's grid cells (keep, cells) so that padding never enters the pyramid: "
        "padding-invariant SETMIL"
    ),
    "milsdk.nn.utils.LazyLinear": (
        "a factory returning torch.nn.Linear (or torch.nn.LazyLinear when in_features is None) instead of a "
        "wrapper module: no '.module.' in state_dict keys, scriptable; the same arguments after self"
    ),
    "milsdk.nn.transformers.layer.Layer.forward": _MODEL_FORWARD,
    "milsdk.nn.transformers.encoder.Encoder.forward": _MODEL_FORWARD,
    "milsdk.nn.transformers.irpe_transformer.iRPETransformerLayer.forward": _MODEL_FORWARD,
    "milsdk.nn.transformers.irpe_transformer.iRPETransformerEncoder.forward": _MODEL_FORWARD,
    "milsdk.nn.variational_autoencoder.VariationalAutoEncoder.__init__": (
        "activations=None means ReLU between hidden layers and none on the last (torchmil's ['relu', 'None'] for "
        "any number of layers), a mutable default otherwise"
    ),
    "milsdk.nn.variational_autoencoder.VariationalAutoEncoderMIL.__init__": (
        "activations=None, as in VariationalAutoEncoder"
    ),
    "milsdk.nn.irpe.get_rpe_config": "method='product' is torchmil's METHOD.PRODUCT (3), by name: the same config",
    "milsdk.utils.trainer.Trainer.__init__": (
        "metrics_dict=None (binary accuracy, a fresh metric per Trainer) and device=None (CUDA when available, "
        "else CPU): torchmil's 'cuda' fails on CPU machines and its metric default is shared"
    ),
    "milsdk.utils.annealing_scheduler.AnnealingScheduler.__init__": _STRICT_ARGS,
    "milsdk.utils.annealing_scheduler.LinearAnnealingScheduler.__init__": _STRICT_ARGS
    + "; clamp (default True) keeps the coefficient inside [start, end]",
    "milsdk.utils.annealing_scheduler.ConstantAnnealingScheduler.__init__": _STRICT_ARGS,
    "milsdk.utils.annealing_scheduler.CyclicalAnnealingScheduler.__init__": _STRICT_ARGS,
    "milsdk.visualize.vis_wsi.draw_heatmap_wsi": (
        "colours given by name ('tab:red' / 'tab:green', the same RGB values): milsdk.visualize needs no "
        "matplotlib at import"
    ),
    "milsdk.visualize.vis_ctscan.draw_heatmap_ctscan": "colours given by name, as draw_heatmap_wsi",
}

BEHAVIOUR: dict[str, str] = {
    "milsdk.data.collate.collate_fn": (
        "the padding mask is bool (True = real instance); torchmil's is uint8. Every milsdk block accepts both"
    ),
    "milsdk.data.collate.pad_tensors": "the mask is bool (True = real instance); torchmil's is uint8",
    "milsdk.nn.relprop.TransformerLayer": (
        "relprop merges the relevance of both branches at the layer input (clone1 gets the residual's and the "
        "attention branch's, as Chefer et al.'s code); torchmil passes the residual's twice and drops the "
        "attention branch's. forward and the layer's own attention-map relevance are the same"
    ),
    "milsdk.nn.relprop.TransformerEncoder": (
        "relprop through TransformerLayer's (see there): the last layer's attention-map relevance is torchmil's, "
        "earlier layers' and the input's differ since they receive both branches' relevance"
    ),
    "milsdk.utils.graph_utils.build_adj": (
        "edge weights are float32 (torchmil: float64), the dtype models compute in"
    ),
    "milsdk.models.camil.CAMILSelfAttention": (
        "with a mask, the softmax runs over the real instances only (padding-invariant); torchmil zeroes the "
        "padded pairs' scores but keeps the padded instances in the softmax, so its real outputs change with "
        "padding. The same function for a bag alone"
    ),
    "milsdk.models.dtfdmil.DTFDMIL": (
        "the eval forward is deterministic: each bag's pseudo-bags are runs of its real instances in the given "
        "order, where torchmil np.random.shuffles the instances on every forward (eval mode too), so its pseudo-bag "
        "logits ('afs': its logits too) are random; and 'maxmin' / 'max' distil one instance per pseudo-bag (the "
        "paper's code), torchmil every instance. The options pseudo_bag_split='array_split' and "
        "distill_instances='all' (set by from_torchmil) reproduce torchmil for a given grouping: the bag fed in the "
        "order torchmil draws"
    ),
}


def all_differences() -> dict[str, str]:
    """Every listed name -> its reason (absent, signature and behaviour together)."""
    return {**ABSENT, **SIGNATURE, **BEHAVIOUR}
