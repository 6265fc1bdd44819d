"""BGE-M3's unified loss with self-knowledge distillation (reference spec §9).

Scores, for ``B`` queries and ``P = B * G`` passages laid out ``[pos, neg_1 .. neg_{G-1}]`` per
query, all divided by the temperature ``tau``:

* ``s_dense = q @ p.T``; ``s_lex = q_sparse @ p_sparse.T`` (vocabulary vectors, never
  normalised); ``s_mul[b, p] = sum_i max_j <Q_b,i, P_p,j> / n_q`` (ColBERT, with the zero rows of
  pads, as FlagEmbedding);
* the teacher ``s_inter = w1 * s_dense + w2 * s_lex + w3 * s_mul`` with ``(1, 0.3, 1)``.

Losses (``CE``: cross-entropy with in-batch and hard negatives, target column ``b * G``):
``L = (L_dense + L_inter + 0.1 * L_lex + L_mul) / 4`` and, with self-distillation,
``L_final = (L + (L'_dense + 0.1 * L'_lex + L'_mul) / 3) / 2`` where ``L'_x`` is the soft-label
cross-entropy of ``softmax(s_x)`` against ``softmax(s_inter.detach())``. With teacher scores in
the data, each CE is replaced by FlagEmbedding's ``m3_kd_loss`` or ``kl_div``.

The formulas follow FlagEmbedding 1.4.2's ``EncoderOnlyEmbedderM3Model.forward`` and
``AbsEmbedderModel`` (credited; not copied): ``tests/train`` checks loss and gradients against
that code within 1e-5 in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

__all__ = ["LOSS_MODES", "LossConfig", "M3Reps", "UnifiedLoss", "lexical_vocab_scores"]

LossMode = Literal["unified", "dense", "sparse", "colbert"]
LOSS_MODES: tuple[LossMode, ...] = ("unified", "dense", "sparse", "colbert")


@dataclass(frozen=True)
class LossConfig:
    """How the heads are trained.

    Attributes:
        mode: ``"unified"`` trains the three heads together (BGE-M3's method); ``"dense"``,
            ``"sparse"`` or ``"colbert"`` trains that head alone (``"dense"`` is FlagEmbedding's
            ``unified_finetuning=False``).
        temperature: Divides every score (the M3 scripts' 0.02).
        teacher_weights: ``(dense, lexical, colbert)`` weights of the ensemble teacher score.
        lexical_loss_weight: Weight of the lexical terms in the combined loss (0.1).
        self_distill: Distil each head towards the ensemble (unified mode only).
        self_distill_start_step: Self-distillation starts once the step counter exceeds this
            (-1: from the first step).
        kd_loss_type: With teacher scores in the data: ``"m3_kd_loss"`` (the M3 scripts') or
            ``"kl_div"``.
        negatives_cross_device: Gather dense representations across ranks (needs an initialised
            ``torch.distributed``); only the dense loss uses them, as in the reference.
    """

    mode: LossMode = "unified"
    temperature: float = 0.02
    teacher_weights: tuple[float, float, float] = (1.0, 0.3, 1.0)
    lexical_loss_weight: float = 0.1
    self_distill: bool = True
    self_distill_start_step: int = -1
    kd_loss_type: Literal["m3_kd_loss", "kl_div"] = "m3_kd_loss"
    negatives_cross_device: bool = False

    def __post_init__(self) -> None:
        if self.mode not in LOSS_MODES:
            msg = f"mode must be one of {LOSS_MODES}, got {self.mode!r}"
            raise ValueError(msg)
        if not (0 < self.temperature < float("inf")):
            msg = f"temperature must be a finite number > 0, got {self.temperature!r}"
            raise ValueError(msg)
        if len(self.teacher_weights) != 3 or not all(
            0 <= w < float("inf") for w in self.teacher_weights
        ):
            msg = (
                "teacher_weights must be 3 finite non-negative numbers (dense, lexical, colbert), "
                f"got {self.teacher_weights!r}"
            )
            raise ValueError(msg)
        if self.kd_loss_type not in ("m3_kd_loss", "kl_div"):
            msg = f"kd_loss_type must be 'm3_kd_loss' or 'kl_div', got {self.kd_loss_type!r}"
            raise ValueError(msg)

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads the loss needs."""
        return ("dense", "sparse", "colbert") if self.mode == "unified" else (self.mode,)


@dataclass
class M3Reps:
    """Training representations of one side (queries or passages).

    Attributes:
        dense: [N, d], L2-normalised.
        sparse: [N, U] lexical vectors over the batch's token vocabulary (see
            [`lexical_vocab_scores`][]); ``None`` when not trained.
        colbert: [N, L-1, d'], L2-normalised, zero rows at pads.
        mask: [N, L] attention mask.
    """

    dense: torch.Tensor | None
    sparse: torch.Tensor | None
    colbert: torch.Tensor | None
    mask: torch.Tensor


def lexical_vocab_scores(
    q_ids: torch.Tensor,
    q_weights: torch.Tensor,
    p_ids: torch.Tensor,
    p_weights: torch.Tensor,
    special_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text lexical vectors, the max weight per token id, over the ids present in the batch.

    FlagEmbedding builds a [N, L, V] scatter and takes the max over L (V = 250k for BGE-M3); the
    dot products only ever meet ids that occur in the batch, so this keeps [N, U] columns for the
    U distinct ids instead -- the same numbers and gradients at a fraction of the memory. Columns
    of special ids (``<s> </s> <pad> <unk>``) are zero, as at inference.

    Returns:
        ``(q_vecs [Nq, U], p_vecs [Np, U])``.
    """
    import torch

    ids = torch.cat([q_ids.reshape(-1), p_ids.reshape(-1)])
    uniq, inverse = torch.unique(ids, return_inverse=True)
    keep = (~torch.isin(uniq, special_ids.to(uniq.device))).to(q_weights.dtype)

    def vectors(inv: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        base = torch.zeros(
            weights.shape[0], uniq.shape[0], dtype=weights.dtype, device=weights.device
        )
        # amax keeps one gradient path per (text, token) as the reference's max over positions
        vecs = base.scatter_reduce(1, inv, weights, reduce="amax", include_self=True)
        return vecs * keep

    n_q = q_ids.numel()
    q_vecs = vectors(inverse[:n_q].view_as(q_ids), q_weights)
    p_vecs = vectors(inverse[n_q:].view_as(p_ids), p_weights)
    return q_vecs, p_vecs


def _need(t: torch.Tensor | None) -> torch.Tensor:
    if t is None:
        msg = "a head the loss mode needs was not computed; pass LossConfig.heads to the model"
        raise ValueError(msg)
    return t


class UnifiedLoss:
    """The loss of [`LossConfig`][] on query and passage representations.

    Keeps the step counter that gates self-distillation, as the reference model does.
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        self.config = config or LossConfig()
        self.step = 0

    # -- scores -------------------------------------------------------------------------------

    def dense_scores(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``q @ p.T / tau``: [B, P]."""
        return (q @ p.T) / self.config.temperature

    def sparse_scores(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """``q_sparse @ p_sparse.T / tau``: [B, P]."""
        return (q @ p.T) / self.config.temperature

    def colbert_scores(
        self, q: torch.Tensor, p: torch.Tensor, q_mask: torch.Tensor
    ) -> torch.Tensor:
        """MaxSim over all passage rows (pads included, as the reference) / query length / tau."""
        import torch

        token = torch.einsum("qin,pjn->qipj", q, p)
        best = token.max(-1).values.sum(1)
        return best / q_mask[:, 1:].sum(-1, keepdim=True) / self.config.temperature

    # -- losses -------------------------------------------------------------------------------

    @staticmethod
    def _local(scores: torch.Tensor, group: int) -> torch.Tensor:
        """The own-group block [B, G] of in-batch scores [B, B*G]."""
        import torch

        b = scores.shape[0]
        rows = torch.arange(b, device=scores.device)
        cols = rows[:, None] * group + torch.arange(group, device=scores.device)[None, :]
        return scores[rows[:, None], cols]

    @staticmethod
    def _soft_ce(targets: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``-mean_b sum_i t_bi log_softmax(s_b)_i`` (FlagEmbedding's "kl_div")."""
        import torch

        return -torch.mean(torch.sum(torch.log_softmax(scores, dim=-1) * targets, dim=-1))

    @staticmethod
    def _m3_kd(targets: torch.Tensor, scores: torch.Tensor, group: int) -> torch.Tensor:
        """Each group member i against all in-batch columns but its group's earlier members."""
        import torch
        import torch.nn.functional as F

        labels = torch.arange(scores.shape[0], device=scores.device) * group
        mask = torch.zeros_like(scores)
        loss = scores.new_zeros(())
        for i in range(group):
            target = labels + i
            member = F.cross_entropy(scores + mask, target, reduction="none")
            loss = loss + torch.mean(targets[:, i] * member)
            mask = mask.scatter(1, target[:, None], torch.finfo(scores.dtype).min)
        return loss

    def _head_loss(
        self, scores: torch.Tensor, group: int, teacher: torch.Tensor | None
    ) -> torch.Tensor:
        """InfoNCE with in-batch and hard negatives, or its teacher-score variants."""
        import torch
        import torch.nn.functional as F

        targets = torch.arange(scores.shape[0], device=scores.device) * group
        if teacher is None:
            return F.cross_entropy(scores, targets)
        if self.config.kd_loss_type == "m3_kd_loss":
            return self._m3_kd(teacher, scores, group)
        return self._soft_ce(teacher, self._local(scores, group)) + F.cross_entropy(scores, targets)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """All ranks' rows of ``t``, this rank's keeping its gradient (cross-device negatives)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            msg = "negatives_cross_device needs an initialised torch.distributed process group"
            raise RuntimeError(msg)
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t)
        parts[dist.get_rank()] = t
        return torch.cat(parts, dim=0)

    def __call__(
        self, q: M3Reps, p: M3Reps, teacher_scores: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The loss of one batch and its parts.

        Args:
            q: Query representations, B rows.
            p: Passage representations, B * G rows, each query's group contiguous with its
                positive first.
            teacher_scores: Optional [B, G] scores from the data (``pos_scores`` /
                ``neg_scores``); turned into targets by a softmax without temperature.

        Returns:
            ``{"loss": ..., "dense": ..., "sparse": ..., "colbert": ..., "ensemble": ...,
            "self_distill": ...}``, the parts that the mode computes (detached, except
            ``loss``).
        """
        import torch

        cfg = self.config
        b = q.mask.shape[0]
        group = p.mask.shape[0] // b
        if group * b != p.mask.shape[0]:
            msg = f"{p.mask.shape[0]} passages do not split into groups for {b} queries"
            raise ValueError(msg)
        teacher = None
        if teacher_scores is not None:
            teacher = torch.softmax(teacher_scores.detach().view(b, group).float(), dim=-1)
            teacher = teacher.to(q.mask.device)
        parts: dict[str, torch.Tensor] = {}
        scores: dict[str, torch.Tensor] = {}
        if "dense" in cfg.heads:
            if cfg.negatives_cross_device:
                import torch.distributed as dist

                all_q, all_p = self._gather(_need(q.dense)), self._gather(_need(p.dense))
                all_t = (
                    self._gather(teacher)
                    if teacher is not None and cfg.kd_loss_type == "m3_kd_loss"
                    else teacher
                )
                full = self.dense_scores(all_q, all_p)
                if teacher is not None and cfg.kd_loss_type == "kl_div":
                    rank = dist.get_rank()
                    local = self._local(full, group)[b * rank : b * (rank + 1)]
                    targets = torch.arange(full.shape[0], device=full.device) * group
                    parts["dense"] = self._soft_ce(
                        teacher, local
                    ) + torch.nn.functional.cross_entropy(full, targets)
                else:
                    parts["dense"] = self._head_loss(full, group, all_t)
                rank = dist.get_rank()
                n_p = _need(p.dense).shape[0]
                scores["dense"] = full[b * rank : b * (rank + 1), n_p * rank : n_p * (rank + 1)]
            else:
                scores["dense"] = self.dense_scores(_need(q.dense), _need(p.dense))
                parts["dense"] = self._head_loss(scores["dense"], group, teacher)
        if "sparse" in cfg.heads:
            scores["sparse"] = self.sparse_scores(_need(q.sparse), _need(p.sparse))
            parts["sparse"] = self._head_loss(scores["sparse"], group, teacher)
        if "colbert" in cfg.heads:
            scores["colbert"] = self.colbert_scores(_need(q.colbert), _need(p.colbert), q.mask)
            parts["colbert"] = self._head_loss(scores["colbert"], group, teacher)
        if cfg.mode != "unified":
            loss = parts[cfg.mode]
        else:
            w_d, w_l, w_c = cfg.teacher_weights
            lw = cfg.lexical_loss_weight
            ensemble = w_d * scores["dense"] + w_l * scores["sparse"] + w_c * scores["colbert"]
            parts["ensemble"] = self._head_loss(ensemble, group, teacher)
            loss = (
                parts["dense"] + parts["ensemble"] + lw * parts["sparse"] + parts["colbert"]
            ) / 4
            if cfg.self_distill and self.step > cfg.self_distill_start_step:
                target = torch.softmax(ensemble.detach(), dim=-1)
                distill = (
                    self._soft_ce(target, scores["dense"])
                    + lw * self._soft_ce(target, scores["sparse"])
                    + self._soft_ce(target, scores["colbert"])
                ) / 3
                parts["self_distill"] = distill
                loss = (loss + distill) / 2
        self.step += 1
        out = {k: v.detach() for k, v in parts.items()}
        out["loss"] = loss
        return out
