"""The device side of FedIN and HeteroAvg (our reconstruction of Chan et al., arXiv 2304.00759).

Train: local cross-entropy; when a feature batch of another device came, also IN training on it,
the two gradients merged by the conflict QP; then (FedIN) upload one batch of its own features.
Evaluate: the received slice of the global model on the local test split. Every knob comes in
the message; the model and data come from the user's functions.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from flwr.app import ArrayRecord, Context, Message
from torch import nn
from torch.nn import functional as F

from flower_eec.clients.device import (
    Device,
    Knobs,
    TrainSettings,
    partition_id,
    reply,
    round_generator,
)
from flower_eec.core.fedin_qp import conflict_direction
from flower_eec.core.learning import (
    SKIPPED_STEPS,
    Images,
    Step,
    evaluate,
    minibatches,
    sgd,
    train_epochs,
)
from flower_eec.data.augment import normalise
from flower_eec.errors import PayloadError
from flower_eec.protocol import names
from flower_eec.protocol.arrays import to_state_dict
from flower_eec.protocol.payloads import FeaturePayload, FeatureSpec, features_to_record

# The parts a FedIN model exposes; model(x) == classifier(intermediate(extractor(x))).
PARTS = ("extractor", "intermediate", "classifier")


def check_fedin_model(model: nn.Module) -> None:
    """Refuse a model without FedIN's three parts (each an ``nn.Module``).

    Raises:
        TypeError: A part is missing, naming the interface to implement.
    """
    missing = [p for p in PARTS if not isinstance(getattr(model, p, None), nn.Module)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} lacks {missing}: a FedIN device's model_fn must build a "
            "model with nn.Module attributes 'extractor' (E), 'intermediate' (IN) and "
            "'classifier' (C), with model(x) == classifier(intermediate(extractor(x))), e.g. "
            "flower_eec.models.fedin.build_fedin_model")


def part(model: nn.Module, name: str) -> nn.Module:
    """One of the model's FedIN parts (``"extractor"``, ``"intermediate"``, ``"classifier"``)."""
    check_fedin_model(model)
    module = getattr(model, name)
    assert isinstance(module, nn.Module)  # checked above; tells the type checker
    return module


def _flat(grads: list[torch.Tensor | None], params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def train_aligned(model: nn.Module, data: Images, received: FeaturePayload, *, mu: float,
                  epochs: int, batch_size: int, lr: float, momentum: float = 0.9,
                  weight_decay: float = 0.0, augmented: bool = True, cutout: int = 0,
                  generator: torch.Generator | None = None) -> dict[str, float]:
    """Local CE training merged with IN training on ``received`` through FedIN's QP, per step.

    Per step: ``g_loc`` = grad of CE on a local mini-batch (all parameters); ``g_in`` = grad of
    ``MSE(IN(s_in), s_out) / mean(s_out^2)`` on the whole received batch (IN parameters only);
    the step follows the QP's direction ``d`` with SGD (momentum, weight decay).

    Returns:
        Mean training loss and accuracy, mean alignment loss, and the counts of QP steps and of
        steps where each constraint bound.
    """
    device = next(model.parameters()).device
    intermediate = part(model, "intermediate")
    params = [p for p in model.parameters() if p.requires_grad]
    in_ids = {id(p) for p in intermediate.parameters()}
    in_params = [p for p in params if id(p) in in_ids]
    s_in = torch.from_numpy(received.s_in).to(device)
    s_out = torch.from_numpy(received.s_out).to(device)
    # MSE relative to the target's mean square: scale-free, so mu means the same at any width,
    # depth or training stage (raw MSE on growing features made SGD diverge on CIFAR-10).
    target_power = s_out.pow(2).mean().clamp_min(1e-8)

    def merged(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        g_loc = _flat(list(torch.autograd.grad(loss, params, allow_unused=True)), params)
        in_loss = F.mse_loss(intermediate(s_in), s_out) / target_power
        in_grads = dict(zip(map(id, in_params),
                            torch.autograd.grad(in_loss, in_params, allow_unused=True),
                            strict=True))
        g_in = _flat([in_grads.get(id(p)) for p in params], params)
        direction, solution = conflict_direction(g_loc, g_in, mu)
        offset = 0
        for p in params:
            p.grad = direction[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return Step(loss, logits, y, {"in_loss": float(in_loss.detach()),
                                      "loc_binds": solution.loc_binds,
                                      "in_binds": solution.in_binds}, gradients_set=True)

    stats = sgd(model, minibatches(data, epochs=epochs, batch_size=batch_size,
                                   augmented=augmented, cutout=cutout, generator=generator,
                                   device=device),
                merged, lr=lr, momentum=momentum, weight_decay=weight_decay, params=params)
    return {"train_loss": stats.loss, "train_accuracy": stats.accuracy,
            "in_loss": stats.mean("in_loss"), "qp_steps": stats.steps,
            "qp_loc_binds": int(stats.extras.get("loc_binds", 0)),
            "qp_in_binds": int(stats.extras.get("in_binds", 0)), SKIPPED_STEPS: stats.skipped}


@torch.no_grad()
def own_features(model: nn.Module, data: Images, batch: int, generator: torch.Generator
                 ) -> FeaturePayload:
    """``(E(x), IN(E(x)))`` in eval mode for ``batch`` random local training images."""
    model.eval()
    index = torch.randperm(len(data), generator=generator)[:batch]
    device = next(model.parameters()).device
    s_in = part(model, "extractor")(normalise(data.x[index], data.mean, data.std).to(device))
    s_out = part(model, "intermediate")(s_in)
    return FeaturePayload(s_in.cpu().numpy(), s_out.cpu().numpy())


class FedINDevice(Device):
    """A FedIN / HeteroAvg device: trains the slice of the global model that its depth carries.

    Register it in your ClientApp with ``FedINDevice(model_fn, train_data_fn,
    test_data_fn).register(app)``; it answers ``train.fedin`` and ``evaluate.fedin``
    (``flower_eec.protocol.names.FEDIN_TRAIN`` / ``FEDIN_EVALUATE``) and ``query.describe``.

    The model. ``model_fn(context)`` builds this node's model, of whatever depth the node carries;
    it must be the model the server's ``FedIN(model_of=...)`` assigns to this device (same tensor
    names and shapes; the device refuses received tensors that do not fit it). Its interface:

    - ``extractor`` (E), ``intermediate`` (IN) and ``classifier`` (C): ``nn.Module`` attributes
      with ``model(x) == classifier(intermediate(extractor(x)))``;
    - every depth shares E and C, and the output shape of IN (so features of one depth can train
      another's IN); tensor names depend on position only, so a shallower model's state dict is
      a subset of a deeper one's.

    ``flower_eec.models.fedin.build_fedin_model(depth, ...)`` builds such ResNets. A model without
    the three parts is a ``TypeError`` at its first message.

    Knobs of a ``train.fedin`` message (``config`` record, all sent by ``FedIN``):
    ``TrainSettings``'s (``lr``, ``momentum``, ``weight-decay``, ``batch-size``,
    ``local-epochs``, ``augment``, ``cutout``, ``seed``), ``server-round``, ``send-features``
    and, when it is true, ``mu`` and the feature spec (``feature-in-shape``,
    ``feature-out-shape``, ``feature-batch``, ``feature-fp16``, ``max-feature-bytes``; see
    ``FeatureSpec``). Records: ``arrays`` (the model's tensors) and, from round 2 of FedIN,
    ``features`` (another device's batch ``s-in``, ``s-out``). Reply: ``arrays``, ``metrics``
    (``num-examples``, ``train_loss``, ``train_accuracy``, ``qp_steps``, ``qp_loc_binds``,
    ``qp_in_binds``, ``in_loss`` when aligned, ``compute_s``) and, under FedIN, ``features``.

    An ``evaluate.fedin`` message carries ``arrays`` and the knob ``eval-batch-size``; the reply's
    ``metrics`` hold ``loss``, ``accuracy`` and ``num-examples`` on the local test split.
    """

    handlers: ClassVar[dict[str, str]] = {names.FEDIN_TRAIN: "train",
                                          names.FEDIN_EVALUATE: "evaluate"}

    def model(self, context: Context) -> nn.Module:
        """A fresh model from ``model_fn``, checked for FedIN's three parts."""
        model = super().model(context)
        check_fedin_model(model)
        return model

    def received_model(self, msg: Message, context: Context) -> nn.Module:
        """This node's model holding the message's ``arrays``.

        Raises:
            PayloadError: The message has no ``arrays``, or its tensors are not this model's.
        """
        if names.ARRAYS not in msg.content.array_records:
            raise PayloadError(f"the message lacks its '{names.ARRAYS}' ArrayRecord")
        model = self.model(context)
        state = to_state_dict(msg.content.array_records[names.ARRAYS])
        own = model.state_dict()
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or extra or wrong:
            raise PayloadError(
                f"the received tensors do not fit this node's model (missing {missing[:3]}, "
                f"unexpected {extra[:3]}, other shape {wrong[:3]}): model_fn must build the "
                "depth that the strategy's model_of gives this device")
        model.load_state_dict(state)
        return model

    def train(self, msg: Message, context: Context) -> Message:
        """Train the received model (aligned when a feature batch came); reply with its tensors,
        the metrics and, when asked, one batch of its own features."""
        started = time.perf_counter()
        knobs = Knobs.of(msg)
        settings = TrainSettings.from_knobs(knobs)
        spec = FeatureSpec.from_config(knobs.record) if knobs.get(
            names.SEND_FEATURES, bool) else None
        model = self.received_model(msg, context)
        data = self.train_data_fn(context)
        generator = round_generator(settings.seed, knobs.server_round, partition_id(context))
        options: dict[str, Any] = {
            "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
            "momentum": settings.momentum, "weight_decay": settings.weight_decay,
            "augmented": settings.augment, "cutout": settings.cutout, "generator": generator}
        if names.FEATURES in msg.content.array_records:
            if spec is None:
                raise PayloadError(f"a feature batch came but '{names.SEND_FEATURES}' is false")
            received = spec.read(msg.content.array_records[names.FEATURES])
            metrics: dict[str, Any] = train_aligned(model, data, received,
                                                    mu=knobs.get(names.MU, float), **options)
        else:
            metrics = {**train_epochs(model, data, **options),
                       "qp_steps": 0, "qp_loc_binds": 0, "qp_in_binds": 0}
        records = {names.ARRAYS: ArrayRecord(model.state_dict())}
        if spec is not None:
            records[names.FEATURES] = features_to_record(
                _checked(own_features(model, data, spec.batch, generator), spec), fp16=spec.fp16)
        metrics[names.NUM_EXAMPLES] = len(data)
        metrics["compute_s"] = time.perf_counter() - started
        return reply(msg, metrics, **records)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Loss and accuracy of the received model on the local test split."""
        model = self.received_model(msg, context)
        data = self.test_data(context)
        metrics: dict[str, Any] = evaluate(model, data,
                                           Knobs.of(msg).get(names.EVAL_BATCH_SIZE, int))
        metrics[names.NUM_EXAMPLES] = len(data)
        return reply(msg, metrics)


def _checked(payload: FeaturePayload, spec: FeatureSpec) -> FeaturePayload:
    """Refuse to send features whose shapes the server does not expect (a wrong model)."""
    got = (tuple(payload.s_in.shape[1:]), tuple(payload.s_out.shape[1:]))
    if got != (spec.in_shape, spec.out_shape):
        raise PayloadError(f"this model's features have shapes s_in {got[0]}, s_out {got[1]} but "
                           f"the strategy expects {spec.in_shape}, {spec.out_shape}: build "
                           "the model for the images and width the server's FeatureSpec assumes")
    return payload
