"""The call routing every graph model shares: ``forward``, ``compute_loss`` and ``predict`` on a bag's graph.

A graph model (``extra_inputs = ("adj",)``) takes its bag's graph either as ``adj`` (B, N, N), dense or sparse,
the training form, or as ``edge_index`` (B, 2, E) / ``edge_weight`` (B, E), the serving form; the subclass
implements one method, ``_forward(X, adj, mask, edge_index, edge_weight) -> (logits, f)``, and this base turns it
into the model contract's three calls. TorchScript compiles the inherited methods against the subclass's
``_forward``.
"""

from __future__ import annotations

import torch

from milsdk.models.mil_model import MILModel

__all__ = ["GraphMILModel"]


class GraphMILModel(MILModel):
    """Base of graph models whose attention output is the pool's logits (see the module docstring).

    Subclasses define ``_forward(X, adj, mask, edge_index, edge_weight)`` returning logits (B,) or (B, C) and the
    attention logits f (B, N) before the masked softmax.
    """

    extra_inputs = ("adj",)
    attention_output = "logits"

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits.

        Args:
            X: (B, N, *in_shape) instance features.
            adj: (B, N, N) dense or sparse adjacency (the training form), or None when ``edge_index`` is given.
            mask: (B, N) True / 1 = real instance (bool or uint8); None = all real.
            return_att: also return the attention logits.
            edge_index: (B, 2, E) int64 edge list (the serving form; used instead of ``adj``).
            edge_weight: (B, E) float32 weights of ``edge_index``, padded edges 0 (None = 1).

        Returns:
            logits (B,) for one output (a survival model's risk score) or (B, C); with ``return_att`` also f
            (B, N), the attention logits before the masked softmax.
        """
        logits, f = self._forward(X, adj, mask, edge_index, edge_weight)
        if return_att:
            return logits, f
        return logits

    def compute_loss(
        self,
        Y: torch.Tensor,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass and the criterion (:meth:`~milsdk.models.MILModel.bag_loss`).

        Args:
            Y: (B,) bag labels; X, adj, mask, edge_index, edge_weight: as in :meth:`forward`.

        Returns:
            logits (B,) or (B, C); losses ``{criterion name: scalar}``.
        """
        logits, _ = self._forward(X, adj, mask, edge_index, edge_weight)
        return logits, self.bag_loss(logits, Y)

    @torch.no_grad()
    def predict(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_inst_pred: bool = True,
        edge_index: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Bag logits and, with ``return_inst_pred``, the attention logits (B, N) as instance scores.

        Args:
            X, adj, mask, edge_index, edge_weight: as in :meth:`forward`.
        """
        logits, f = self._forward(X, adj, mask, edge_index, edge_weight)
        if return_inst_pred:
            return logits, f
        return logits
