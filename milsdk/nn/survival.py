"""Survival losses on bag risk scores: the Cox proportional-hazards partial likelihood (Cox, 1972), the loss of
DeepGraphSurv (Li et al., MICCAI 2018) and DeepConvSurv.

Survival targets: ``Y`` (B, 2) float, one row ``[time, event]`` per bag, time the follow-up time (any unit,
larger = later) and event 1 when the event (e.g. death) was observed at that time, 0 when the bag is censored
(event-free until then). A bag whose ``Y`` is ``tensor([time, event])`` is collated by ``collate_fn`` to this
(B, 2). Risk scores: higher = higher hazard = shorter expected survival (the model's logit, (B,) or (B, 1)).
"""

from __future__ import annotations

import torch

__all__ = ["CoxPHLoss", "cox_ph_loss", "survival_targets"]


def survival_targets(Y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split survival targets into times and event indicators.

    Args:
        Y: (n, 2) ``[time, event]`` rows.
        n: the number of risk scores they go with.

    Returns:
        time (n,) float, event (n,) bool.

    Raises:
        ValueError: Y is not (n, 2).
    """
    if Y.dim() != 2 or Y.shape[1] != 2 or Y.shape[0] != n:
        raise ValueError(
            f"survival targets Y must be (B, 2) rows [time, event] for {n} risk scores, got shape {list(Y.shape)}"
        )
    return Y[:, 0].float(), Y[:, 1] != 0


def cox_ph_loss(risk: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    r"""Negative Cox partial log-likelihood of a batch (Breslow's handling of tied times), averaged over events.

    .. math::
        \mathcal{L} = -\frac{1}{n_{ev}} \sum_{i:\, e_i = 1} \Big( r_i - \log \sum_{j:\, t_j \ge t_i}
            e^{r_j} \Big)

    The risk set of bag i is every bag of the batch still at risk at :math:`t_i` (tied times included), so the
    loss is a property of the batch, not of one bag: it needs batches of several bags with at least one event
    (a batch of one bag, or one without events, gives 0 and no gradient). Computed as a masked (B, B)
    log-sum-exp: B is the batch size.

    Args:
        risk: (B,) or (B, 1) risk scores (log hazard ratios).
        Y: (B, 2) ``[time, event]`` rows.

    Returns:
        Scalar loss (0, still attached to ``risk``, when the batch has no event).
    """
    r = risk.reshape(-1).float()
    time, event = survival_targets(Y.to(r.device), r.numel())
    at_risk = time.unsqueeze(0) >= time.unsqueeze(1)  # [i, j]: bag j is at risk when bag i has its event
    log_risk_set = torch.logsumexp(r.unsqueeze(0).masked_fill(~at_risk, -3.4028234663852886e38), dim=1)
    ev = event.to(r.dtype)
    return -((r - log_risk_set) * ev).sum() / ev.sum().clamp_min(1.0)


class CoxPHLoss(torch.nn.Module):
    """Module form of :func:`cox_ph_loss`: ``loss(risk (B,) or (B, 1), Y (B, 2) [time, event]) -> scalar``.

    Models recognise it (``survival = True``) and pass it the (B, 2) targets unchanged.
    """

    #: marks a criterion that takes (B, 2) [time, event] targets instead of class labels
    survival = True

    def forward(self, risk: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """risk: (B,) or (B, 1); Y: (B, 2) -> scalar."""
        return cox_ph_loss(risk, Y)
