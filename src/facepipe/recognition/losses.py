"""Recognition losses: the margin family on a (Partial FC, rank-sharded) classifier, center loss,
and the metric-learning losses (contrastive, triplet with batch-hard or semi-hard mining).

Margin family, on cos(theta) between an embedding and its class center (InsightFace's combined form):

    target logit = s * (cos(m1 * theta + m2) - m3),  other logits = s * cos(theta_j)

softmax is the plain linear classifier; NormFace is (1, 0, 0); SphereFace m1; ArcFace m2; CosFace m3.
Past theta_c = (pi - m2) / m1 the cosine would rise again, so the target logit continues as
cos(theta) shifted to stay continuous: it keeps falling as theta grows and the margin never
rewards a worse angle.

Under DDP each rank keeps 1/world of the class centers (model-parallel, as Partial FC): embeddings
and labels are gathered from all ranks, each rank scores its own (sampled) centers, and the softmax
denominator is summed across ranks, so no rank ever holds the full classifier.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def combined_margin_target(cos_t: torch.Tensor, m1: float, m2: float, m3: float) -> torch.Tensor:
    """cos(m1*theta + m2) - m3 for the target class, kept monotonic in theta on [0, pi]."""
    if m1 == 1.0 and m2 == 0.0:
        return cos_t - m3  # CosFace / NormFace: no angle needed (and no acos gradient blow-up)
    theta = torch.acos(cos_t.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
    theta_c = (math.pi - m2) / m1
    inside = torch.cos(m1 * theta + m2) - m3
    outside = cos_t - math.cos(theta_c) - 1.0 - m3
    return torch.where(theta <= theta_c, inside, outside)


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """Concatenate equal-sized batches from every rank; the backward sums gradients across ranks."""

    @staticmethod
    def forward(ctx, x):
        rank, world = _world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.world, ctx.n = rank, world, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        # DDP averages backbone gradients over ranks; scale up so the step matches the global-mean loss
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n] * ctx.world


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy when the class dimension is split across ranks.

    `labels[i]` is the column of sample i's class in this rank's logits, or -1 when another rank
    holds it. Max and denominator are all-reduced so every rank computes the same loss.
    """

    @staticmethod
    def forward(ctx, logits, labels):
        row_max = logits.max(dim=1, keepdim=True).values
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        exp = (logits - row_max).exp_()
        denom = exp.sum(dim=1, keepdim=True)
        dist.all_reduce(denom)
        prob = exp.div_(denom)
        here = labels >= 0
        p_target = torch.zeros(logits.shape[0], device=logits.device, dtype=logits.dtype)
        p_target[here] = prob[here, labels[here]]
        dist.all_reduce(p_target)
        ctx.save_for_backward(prob, labels)
        return -p_target.clamp_min(1e-30).log().mean()

    @staticmethod
    def backward(ctx, grad_out):
        prob, labels = ctx.saved_tensors
        grad = prob.clone()
        here = labels >= 0
        grad[here, labels[here]] -= 1.0
        return grad * (grad_out / prob.shape[0]), None


class MarginHead(nn.Module):
    """Classifier with a margin loss; holds this rank's shard of the class centers.

    `forward(embeddings, labels) -> (loss, correct)`, where `correct` counts samples (of the whole
    gathered batch) whose target logit is the largest.
    """

    def __init__(self, num_classes: int, embedding_size: int, loss: str = "arcface",
                 margins: tuple[float, float, float] = (1.0, 0.5, 0.0), scale: float = 64.0,
                 sample_rate: float = 1.0):
        super().__init__()
        self.rank, self.world = _world()
        base, extra = divmod(num_classes, self.world)
        self.num_local = base + (1 if self.rank < extra else 0)
        self.start = self.rank * base + min(self.rank, extra)
        self.num_classes, self.loss, self.margins, self.scale = num_classes, loss, margins, scale
        self.sample_rate = sample_rate
        # drawn in place: `randn(...) * 0.01` held two shards at once (2 GB per rank at 1M classes x 512)
        self.weight = nn.Parameter(torch.empty(self.num_local, embedding_size).normal_(0.0, 0.01))

    def _sample(self, local: torch.Tensor):
        """Partial FC: keep every positive center on this shard plus random negatives."""
        num_sample = max(1, int(math.ceil(self.sample_rate * self.num_local)))
        here = local >= 0
        positives = torch.unique(local[here])
        if self.sample_rate >= 1.0 or num_sample >= self.num_local or not self.training:
            return self.weight, local
        num_sample = max(num_sample, positives.numel())
        score = torch.rand(self.num_local, device=local.device)
        score[positives] = 2.0
        index = torch.topk(score, num_sample).indices.sort().values
        remap = torch.full((self.num_local,), -1, dtype=torch.long, device=local.device)
        remap[index] = torch.arange(num_sample, device=local.device)
        local = local.clone()
        local[here] = remap[local[here]]
        return self.weight[index], local

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        embeddings = embeddings.float()
        if self.world > 1:
            embeddings = _AllGather.apply(embeddings)
            gathered = [torch.empty_like(labels) for _ in range(self.world)]
            dist.all_gather(gathered, labels.contiguous())
            labels = torch.cat(gathered)
        local = labels - self.start
        local[(local < 0) | (local >= self.num_local)] = -1
        weight, local = self._sample(local)
        if self.loss == "softmax":
            logits = embeddings @ weight.float().t()
        else:
            cos = F.normalize(embeddings) @ F.normalize(weight.float()).t()
            here = torch.nonzero(local >= 0).squeeze(1)
            target = combined_margin_target(cos[here, local[here]], *self.margins)
            cos = cos.index_put((here, local[here]), target)
            logits = cos * self.scale
        if self.world > 1:
            loss = _ShardedCrossEntropy.apply(logits, local)
        else:
            loss = F.cross_entropy(logits, local)
        return loss, self._correct(logits.detach(), local)

    def _correct(self, logits: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        row_max = logits.max(dim=1).values
        if self.world > 1:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        here = local >= 0
        hit = torch.zeros((), device=logits.device)
        if here.any():
            hit = (logits[here, local[here]] >= row_max[here]).sum().float()
        if self.world > 1:
            dist.all_reduce(hit)
        return hit


class CenterLoss(nn.Module):
    """Mean squared distance of L2-normalised embeddings to their learned class centers (Wen et al. 2016)."""

    def __init__(self, num_classes: int, embedding_size: int):
        super().__init__()
        self.centers = nn.Parameter(F.normalize(torch.randn(num_classes, embedding_size), dim=1))

    def forward(self, embeddings, labels):
        diff = F.normalize(embeddings.float()) - self.centers[labels]
        return 0.5 * diff.pow(2).sum(dim=1).mean()


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between L2-normalised embeddings, safe to differentiate at 0."""
    e = F.normalize(embeddings.float())
    d2 = (2.0 - 2.0 * e @ e.t()).clamp_min(0.0)
    return (d2 + 1e-12).sqrt()


def contrastive_loss(embeddings, labels, margin: float = 1.0) -> torch.Tensor:
    """Hadsell et al. 2006 over every pair of the batch; same-identity and different-identity
    terms are averaged separately so P x K batches (few positives) still pull positives together."""
    d = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    off_diag = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & off_diag, ~same
    terms = []
    if pos.any():
        terms.append(d[pos].pow(2).mean())
    if neg.any():
        terms.append(F.relu(margin - d[neg]).pow(2).mean())
    return sum(terms)


def triplet_loss(embeddings, labels, margin: float = 0.3, mining: str = "batch_hard") -> torch.Tensor:
    """Triplet loss on a P x K batch.

    batch_hard (TriHard, Hermans et al. 2017): per anchor, its farthest positive and nearest negative.
    semi_hard (FaceNet): per anchor-positive pair, the nearest negative farther than the positive;
    when there is none, the farthest negative.
    """
    d = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        raise ValueError("triplet loss needs at least two images of one identity and two identities per batch")
    if mining == "batch_hard":
        hardest_pos = d.masked_fill(~pos, -1.0).max(dim=1).values
        hardest_neg = d.masked_fill(~neg, float("inf")).min(dim=1).values
        return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()
    if mining != "semi_hard":
        raise ValueError(f"mining {mining!r}: expected batch_hard or semi_hard")
    a, p = torch.nonzero(pos, as_tuple=True)
    d_ap = d[a, p]
    d_an = d[a]                                   # (pairs, B)
    negs = neg[a]
    farther = negs & (d_an > d_ap[:, None])
    nearest_farther = d_an.masked_fill(~farther, float("inf")).min(dim=1).values
    farthest = d_an.masked_fill(~negs, -1.0).max(dim=1).values
    chosen = torch.where(farther.any(1), nearest_farther, farthest)
    keep = negs.any(1)
    return F.relu(d_ap - chosen + margin)[keep].mean()
