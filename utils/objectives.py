"""Training objectives: what is trained, against which teacher signal, and how it is evaluated.

Each objective follows :class:`Objective`: ``loss(batch, network)`` returns ``(sum, count)``
of per-item losses (the loss is their mean), running ``network`` (``self.network``, or its
DistributedDataParallel wrapper under torchrun). The teacher is frozen and run under ``torch.no_grad``;
only ``trainable`` gets gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from models import IGNORE_INDEX, FeedForward, MultiHeadAttention, SimplifiedBert, assemble, teacher_layer_map
from models.methods import Family
from utils.device import to_device
from utils.metrics import evaluate_mlm, kl_divergence
from utils.signals import Signal, TeacherSignal

LossParts = tuple[torch.Tensor, int]
CPU = torch.device("cpu")
# a batch key: the teacher's forward on the batch, computed once for several models healed in lockstep
# ({traced: the forward's output}; :func:`utils.finetune.one_teacher_forward`)
TEACHER_OUTPUTS = "teacher_outputs"


class Objective(Protocol):
    """What a script trains.

    ``trainable`` holds every parameter the optimizer updates (and only it is checkpointed);
    ``network`` is the module whose forward the loss runs; ``loss(batch, network)`` runs ``network``
    (``self.network``, or its DistributedDataParallel wrapper under torchrun) on a batch on the device
    and returns ``(sum, count)``: the loss is ``sum / count``, kept apart so that processes with
    different token counts average exactly like one process; ``evaluate`` maps the validation loader
    to named metrics.
    """

    trainable: nn.Module
    network: nn.Module
    validation_loss: str  # the name of the evaluation's loss (lower is better) --stop_patience watches; optional

    def loss(self, batch: dict[str, torch.Tensor], network: nn.Module) -> tuple[torch.Tensor, int]: ...

    def evaluate(self, loader) -> dict[str, float]: ...


def sum_count(values: torch.Tensor) -> LossParts:
    """Per-item losses -> (sum, number of items)."""
    return values.sum(), values.numel()


def pointwise(criterion: str, prediction: torch.Tensor, target: torch.Tensor) -> LossParts:
    """Squared (MSE) or absolute (L1) errors, summed, and the element count."""
    errors = (prediction - target).pow(2) if criterion == "MSE" else (prediction - target).abs()
    return sum_count(errors)


def distribution_loss(
    criterion: str, teacher_probs: torch.Tensor, student_probs: torch.Tensor, real_keys: torch.Tensor
) -> LossParts:
    """Compare attention distributions over keys, rows [N, heads, T] of real query tokens; ``real_keys``
    [N, T] marks each row's real (unpadded) keys, so that MSE and L1 average over real keys only and do
    not depend on how much a batch is padded.

    Same head count: head by head. Different head counts: heads cannot be paired, so the
    head-averaged distributions [N, T] are compared.
    """
    if teacher_probs.shape[1] != student_probs.shape[1]:
        teacher_probs, student_probs = teacher_probs.mean(1), student_probs.mean(1)
    if criterion == "CrossEntropy":  # one value per distribution; padded keys carry probability 0
        return sum_count(-(teacher_probs * student_probs.clamp_min(1e-12).log()).sum(-1))
    keys = real_keys if teacher_probs.dim() == 2 else real_keys[:, None, :].expand_as(teacher_probs)
    errors = student_probs - teacher_probs
    errors = errors.pow(2) if criterion == "MSE" else errors.abs()
    return errors[keys].sum(), int(keys.sum())


@torch.no_grad()
def mean_squared_error(loader, device: torch.device, pairs: Callable[[dict], Signal]) -> float:
    """MSE over a loader of ``pairs(batch) -> (prediction, target)``, each [N_real, H]."""
    squared_error, values = 0.0, 0
    for batch in loader:
        prediction, target = pairs(to_device(batch, device))
        squared_error += (prediction.float() - target.float()).pow(2).sum().item()
        values += target.numel()
    return squared_error / values


@torch.no_grad()
def replaced_mlm_metrics(teacher: SimplifiedBert, replaced: SimplifiedBert, loader, device) -> dict[str, float]:
    """Top-1 of the teacher, of the teacher with one module replaced, and their agreement, on ``loader``."""
    mlm, _ = evaluate_mlm({"teacher": teacher, "replaced": replaced.eval()}, loader, device)
    return {
        "teacher_top1": mlm["teacher"]["top1"],
        "replaced_top1": mlm["replaced"]["top1"],
        "replaced_agree_top1": mlm["replaced"]["agree_top1"],
    }


@torch.no_grad()
def block_signal(teacher: SimplifiedBert, block: int, batch: dict) -> Signal:
    """What a block's attention or feed-forward student learns from: the hidden state entering layer ``block``
    and the teacher's attention output there (before residual + LayerNorm), [B, T, H] each."""
    hidden_in = teacher.encode(batch["input_ids"], batch["attention_mask"], stop=block)
    return hidden_in, teacher.layers[block].attention(hidden_in, batch["attention_mask"].bool())[0]


class _TeacherBlockPart:
    """What the objectives that retrain one part of teacher layer ``block`` share: the :func:`block_signal` they
    learn from, and their evaluation: the MSE of ``_outputs`` (the student's output and its target, [N_real, H]
    each) and, with ``mlm_metrics``, the MLM metrics of the teacher with ``trainable`` in that part's place."""

    mse_metric: str  # the evaluation's name of the MSE

    @property
    def validation_loss(self) -> str:
        return self.mse_metric

    replaces: str  # the keyword of :func:`models.assemble` that puts ``trainable`` in the teacher

    def __init__(self, teacher: SimplifiedBert, block: int, student: nn.Module, mlm_metrics: bool, device):
        self.teacher, self.block = teacher, block
        self.trainable = self.network = student
        self.mlm_metrics, self.device = mlm_metrics, device
        self.signal = TeacherSignal(functools.partial(block_signal, teacher, block))

    def _outputs(self, batch: dict) -> Signal:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        metrics = {self.mse_metric: mean_squared_error(loader, self.device, self._outputs)}
        if self.mlm_metrics:
            replaced = assemble(self.teacher, **{self.replaces: {self.block: self.trainable}})
            metrics.update(replaced_mlm_metrics(self.teacher, replaced, loader, self.device))
        return metrics


class AttentionDistillation(_TeacherBlockPart):
    """Retrain one layer's attention on the teacher's own activations (retrain_single_block.py).

    Signal: the hidden state entering layer ``block`` [B, T, H] and the teacher's attention output
    before residual + LayerNorm [B, T, H]; with ``loss_on_scores`` the teacher's attention distribution
    [B, heads, T, T] is recomputed from the input (one attention, cheap) and compared instead.
    """

    mse_metric, replaces = "block_mse", "attentions"

    def __init__(
        self,
        teacher: SimplifiedBert,
        block: int,
        student: MultiHeadAttention,
        criterion: str = "MSE",
        loss_on_logits: bool = False,
        loss_on_scores: bool = False,
        mlm_metrics: bool = True,
        device: torch.device = CPU,
    ):
        super().__init__(teacher, block, student, mlm_metrics, device)
        self.teacher_attention = teacher.layers[block].attention
        self.criterion, self.loss_on_logits, self.loss_on_scores = criterion, loss_on_logits, loss_on_scores

    def loss(self, batch: dict, network: nn.Module) -> LossParts:
        hidden_in, teacher_out = self.signal(batch)
        real = batch["attention_mask"].bool()  # [B, T]: padding does not count
        student_out, student_probs = network(hidden_in, real, return_probs=self.loss_on_scores)
        if self.loss_on_scores:  # rows [B, heads, T, T] -> [N_real, heads, T]
            with torch.no_grad():
                teacher_probs = self.teacher_attention(hidden_in, real, return_probs=True)[1]
            real_keys = real[:, None, :].expand(-1, real.shape[1], -1)[real]  # [N_real, T]: each query's real keys
            return distribution_loss(
                self.criterion,
                teacher_probs.transpose(1, 2)[real].float(),
                student_probs.transpose(1, 2)[real].float(),
                real_keys,
            )
        student_out, teacher_out = student_out[real].float(), teacher_out[real].float()  # [N_real, H]
        if self.loss_on_logits:
            return sum_count(-(teacher_out.softmax(-1) * student_out.log_softmax(-1)).sum(-1))
        return pointwise(self.criterion, student_out, teacher_out)

    def _outputs(self, batch: dict) -> Signal:
        hidden_in, teacher_out = self.signal(batch)
        real = batch["attention_mask"].bool()
        return self.trainable(hidden_in, real)[0][real], teacher_out[real]


class FeedForwardDistillation(_TeacherBlockPart):
    """Retrain one layer's feed-forward on the teacher's own activations (retrain_single_block.py --part ffn).

    Signal: the same as :class:`AttentionDistillation`'s (the hidden state entering layer ``block`` and its
    attention output, [B, T, H] each), so the store, the caches and lockstep serve both; the feed-forward's
    input is ``LN(input + attention output)`` and its target the teacher's feed-forward output before residual
    + LayerNorm, both computed here by the frozen teacher layer (cheap: one LayerNorm and one feed-forward).
    """

    mse_metric, replaces = "ffn_mse", "feed_forwards"

    def __init__(
        self,
        teacher: SimplifiedBert,
        block: int,
        student: FeedForward,
        criterion: str = "MSE",
        mlm_metrics: bool = True,
        device: torch.device = CPU,
    ):
        super().__init__(teacher, block, student, mlm_metrics, device)
        self.criterion = criterion
        self.layer = teacher.layers[block]
        self.teacher_feed_forward = FeedForward.of_layer(self.layer)

    @torch.no_grad()
    def _input_and_target(self, batch: dict) -> Signal:
        """The feed-forward's input and the teacher's output at the real tokens, [N_real, H] each."""
        hidden_in, attention_out = self.signal(batch)
        real = batch["attention_mask"].bool()
        ffn_in = self.layer.attention_norm(hidden_in + attention_out)[real]
        return ffn_in, self.teacher_feed_forward(ffn_in)

    def loss(self, batch: dict, network: nn.Module) -> LossParts:
        ffn_in, target = self._input_and_target(batch)
        return pointwise(self.criterion, network(ffn_in).float(), target.float())

    def _outputs(self, batch: dict) -> Signal:
        ffn_in, target = self._input_and_target(batch)
        return self.trainable(ffn_in), target


class MaskedLMTraining:
    """Train a whole BERT masked LM on its masked tokens (train_teacher.py): cross-entropy with the labels."""

    def __init__(self, model: SimplifiedBert, device: torch.device):
        self.trainable = self.network = model
        self.device = device

    def loss(self, batch: dict, network: nn.Module) -> LossParts:
        logits = network(**batch)  # [N, V]
        targets = batch["labels"][batch["labels"] != IGNORE_INDEX]
        return sum_count(F.cross_entropy(logits.float(), targets, reduction="none"))

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        mlm, _ = evaluate_mlm({"model": self.trainable}, loader, self.device, teacher=None)
        return {key: mlm["model"][key] for key in ("top1", "top5")}


def output_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    hard_label_weight: float,
) -> LossParts:
    """KL(teacher || student) of the masked-token distributions at ``temperature`` (scaled by T^2 so the
    gradient size does not depend on T), plus ``hard_label_weight`` x cross-entropy with the true tokens;
    per masked token. Logits [N, V], labels [N]."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    teacher_log_probs = (teacher_logits / temperature).log_softmax(-1)
    student_log_probs = (student_logits / temperature).log_softmax(-1)
    per_token = kl_divergence(teacher_log_probs, student_log_probs) * temperature**2
    if hard_label_weight:
        per_token = per_token + hard_label_weight * F.cross_entropy(student_logits, labels, reduction="none")
    return sum_count(per_token)


class OutputDistillation:
    """Train ``trainable`` (a part of ``student``) so that the student's masked-token distribution matches
    the teacher's (train_block_till_end, train_full_merged_model, finetune_fully_merged)."""

    validation_loss = "kl_from_teacher"
    traced = False  # whether the loss reads the teacher's layers (its forward with ``trace``)

    def __init__(
        self,
        teacher: SimplifiedBert,
        student: SimplifiedBert,
        trainable: nn.Module,
        temperature: float = 1.0,
        hard_label_weight: float = 0.0,
        device: torch.device = CPU,
    ):
        self.teacher, self.trainable, self.network = teacher, trainable, student
        self.student = student
        self.temperature, self.hard_label_weight, self.device = temperature, hard_label_weight, device

    def teacher_forward(self, batch: dict) -> tuple[dict, object]:
        """The batch without the teacher's forward, and that forward (``trace``d where :attr:`traced`): the one
        a lockstep run computed for every model (:data:`TEACHER_OUTPUTS`), or this model's own."""
        inputs = {key: value for key, value in batch.items() if key != TEACHER_OUTPUTS}
        if TEACHER_OUTPUTS in batch:
            return inputs, batch[TEACHER_OUTPUTS][self.traced]
        with torch.no_grad():
            return inputs, self.teacher(**inputs, trace=self.traced)

    def loss(self, batch: dict, network: nn.Module) -> LossParts:
        batch, teacher_logits = self.teacher_forward(batch)
        labels = batch["labels"][batch["labels"] != IGNORE_INDEX]
        return output_distillation_loss(
            network(**batch), teacher_logits, labels, self.temperature, self.hard_label_weight
        )

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        mlm, _ = evaluate_mlm({"teacher": self.teacher, "student": self.student}, loader, self.device)
        student = mlm["student"]
        return {
            "teacher_top1": mlm["teacher"]["top1"],
            "top1": student["top1"],
            "top5": student["top5"],
            "agree_top1": student["agree_top1"],
            "kl_from_teacher": student["kl_from_teacher"],
        }


def layerwise_loss(
    student_hiddens: list[torch.Tensor],
    student_probs: list[torch.Tensor],
    teacher_hiddens: list[torch.Tensor],
    teacher_probs: list[torch.Tensor],
    layer_map: list[int],
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """The mean over student layers of the MSE between each layer's output [B, T, H] and the output of the teacher
    layer ``layer_map`` gives it, over real tokens (``attention_mask`` [B, T]); plus the mean over the layers with
    as many heads as theirs of KL(teacher || student) of the attention distributions [B, heads, T, T], per real
    query and head (a layer with other heads is compared by its output alone)."""
    real = attention_mask.bool()
    hidden = [
        F.mse_loss(ours[real].float(), teacher_hiddens[theirs][real].float())
        for ours, theirs in zip(student_hiddens, layer_map, strict=True)
    ]
    attention = []
    for ours, theirs in zip(student_probs, layer_map, strict=True):
        target = teacher_probs[theirs]
        if ours.shape != target.shape:
            continue
        target, ours = target.float(), ours.float()
        per_query = (target * (target.clamp_min(1e-12).log() - ours.clamp_min(1e-12).log())).sum(-1)  # [B, h, T]
        attention.append(per_query.transpose(1, 2)[real].mean())
    loss = torch.stack(hidden).mean()
    return loss + torch.stack(attention).mean() if attention else loss


class LayerwiseDistillation(OutputDistillation):
    """:class:`OutputDistillation` plus :func:`layerwise_loss`: every student layer's output against the teacher
    layer it stands for (:func:`models.teacher_layer_map`: through dropped and merged depths) and its attention
    distributions where the head counts allow (TinyBERT's layer-wise distillation, MiniLM's attention transfer)."""

    traced = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_map = teacher_layer_map(self.student)

    def loss(self, batch: dict, network: nn.Module) -> LossParts:
        batch, (teacher_logits, teacher_hiddens, teacher_probs) = self.teacher_forward(batch)
        logits, hiddens, probs = network(**batch, trace=True)
        labels = batch["labels"][batch["labels"] != IGNORE_INDEX]
        total, count = output_distillation_loss(
            logits, teacher_logits, labels, self.temperature, self.hard_label_weight
        )
        layers = layerwise_loss(hiddens, probs, teacher_hiddens, teacher_probs, self.layer_map, batch["attention_mask"])
        return total + count * layers, count  # mean: the KL per masked token plus the layer-wise loss


class Lagrangian(nn.Module):
    """CoFi's multipliers λ1, λ2 of the size constraint (an optimizer group that ascends them: ``maximize``) and the
    steps trained so far (a buffer: the target's schedule resumes where it was)."""

    def __init__(self):
        super().__init__()
        self.lambdas = nn.Parameter(torch.zeros(2))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


class LearnedMaskDistillation(LayerwiseDistillation):
    """CoFi (Xia et al. 2022): :class:`LayerwiseDistillation` of a model whose heads and neurons are gated by learned
    masks (:class:`models.learned_masks.LearnedMasks`, installed on ``student``), plus the Lagrangian
    λ1 (s - t) + λ2 (s - t)² of the masks' expected share s of the teacher's encoder FLOPs against the target t,
    lowered linearly from 1 to ``target`` over the first ``warmup_steps`` steps. Trains the model, the masks and
    (ascending) the multipliers: ``trainable`` holds all three."""

    def __init__(self, teacher, student, masks, target: float, seq_len: int, warmup_steps: int, *args, **kwargs):
        super().__init__(teacher, student, student, *args, **kwargs)
        from models.cost import model_cost

        self.masks, self.target, self.seq_len, self.warmup_steps = masks, target, seq_len, max(warmup_steps, 1)
        self.full = float(model_cost(teacher, seq_len)["flops_per_token"])
        self.lagrangian = Lagrangian().to(device=kwargs.get("device", CPU))
        self.trainable = nn.ModuleDict({"model": student, "masks": masks, "lagrangian": self.lagrangian})

    def target_now(self) -> float:
        done = min(1.0, float(self.lagrangian.steps) / self.warmup_steps)
        return 1.0 - done * (1.0 - self.target)

    def expected_share(self) -> torch.Tensor:
        return self.masks.expected_flops(self.seq_len) / self.full

    def loss(self, batch: dict, network: nn.Module) -> LossParts:
        total, count = super().loss(batch, network)
        gap = self.expected_share() - self.target_now()
        lambdas = self.lagrangian.lambdas
        self.lagrangian.steps += 1
        return total + count * (lambdas[0] * gap + lambdas[1] * gap**2), count

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        shares = {"expected_flops_share": float(self.expected_share()), "target_flops_share": self.target_now()}
        return {**super().evaluate(loader), **shares}


# The healing objectives (--healing): how a simplified model is trained end to end against its teacher.
HEALING = Family("healing", produces="the objective that heals a model end to end", label="healing")
HEALING.register("output", "KL(teacher || student) at the masked token (the original repository's)")(OutputDistillation)
HEALING.register(
    "layerwise",
    "the same plus every layer's output, and its attention distributions where the head counts match, against "
    "the teacher layer it stands for (TinyBERT / MiniLM)",
)(LayerwiseDistillation)


class MergeDistillation:
    """Train one layer to map the hidden state entering teacher layer ``block`` to the one leaving
    ``block + 1`` (MSE over real tokens) — retrain_merge and its conditioned variant.

    ``prefix`` computes the merged layer's input: by default the teacher's own layers ``0..block-1``;
    conditioned training passes a model whose first ``prefix_stop`` layers are already-merged layers.
    """

    validation_loss = "merge_mse"

    def __init__(
        self,
        teacher: SimplifiedBert,
        block: int,
        merged: nn.Module,
        prefix: SimplifiedBert | None = None,
        prefix_stop: int | None = None,
        mlm_metrics: bool = True,
        device: torch.device = CPU,
    ):
        self.teacher, self.block = teacher, block
        self.trainable = self.network = merged
        self.prefix = prefix if prefix is not None else teacher
        self.prefix_stop = block if prefix_stop is None else prefix_stop
        self.mlm_metrics, self.device = mlm_metrics, device
        self.signal = TeacherSignal(self._teacher_signal)

    @property
    def conditioned(self) -> bool:
        return self.prefix is not self.teacher

    @torch.no_grad()
    def _teacher_signal(self, batch: dict) -> Signal:
        """Merged layer input [B, T, H] and the teacher's hidden state after layer block+1 [B, T, H]."""
        mask = batch["attention_mask"]
        teacher_in = self.teacher.encode(batch["input_ids"], mask, stop=self.block)
        target = self.teacher.encode(None, mask, hidden=teacher_in, start=self.block, stop=self.block + 2)
        if not self.conditioned:
            return teacher_in, target
        return self.prefix.encode(batch["input_ids"], mask, stop=self.prefix_stop), target

    def loss(self, batch: dict, network: nn.Module) -> LossParts:
        hidden_in, target = self.signal(batch)
        real = batch["attention_mask"].bool()
        return pointwise("MSE", network(hidden_in, real)[real].float(), target[real].float())

    def _outputs(self, batch: dict) -> Signal:
        hidden_in, target = self.signal(batch)
        real = batch["attention_mask"].bool()
        return self.trainable(hidden_in, real)[real], target[real]

    def model(self) -> SimplifiedBert:
        """The teacher with the pair replaced (after the conditioned prefix, if any), in eval mode."""
        if not self.conditioned:
            return assemble(self.teacher, merged={self.block: self.trainable}).eval()
        layers = [*self.prefix.layers[: self.prefix_stop], self.trainable, *self.teacher.layers[self.block + 2 :]]
        return SimplifiedBert(self.teacher.config, self.teacher.embeddings, layers, self.teacher.mlm_head).eval()

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        metrics = {"merge_mse": mean_squared_error(loader, self.device, self._outputs)}
        if self.mlm_metrics:
            mlm, _ = evaluate_mlm({"teacher": self.teacher, "merged": self.model()}, loader, self.device)
            metrics.update(
                teacher_top1=mlm["teacher"]["top1"],
                merged_top1=mlm["merged"]["top1"],
                merged_agree_top1=mlm["merged"]["agree_top1"],
            )
        return metrics
