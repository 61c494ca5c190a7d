"""The training step loop of the token-routing adapter families (LoRA-MoE gates, S'MoRE):
AdamW over the given parameters (warmup, cosine), gradients clipped at norm 1, the answer-token
loss plus `aux_weight` x the model's balance loss, and the routers' usage logged every
`log_every` steps. What differs between the families comes from the model: which state a
training session sets (`model.training_session(seed)`), its balance loss (`aux_loss()`) and its
usage counters (`usage_shares()`, `reset_usage()`); `summarize` turns the usage into what
training.json keeps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .train import _batches, _collate, answer_loss, learning_rate_factor

log = logging.getLogger(__name__)

StepCallback = Callable[[int, float, float], None]  # (step, answer loss, balance loss)


def routed_steps(model, params, tokenizer, data, settings, result, *, aux_weight: float = 1.0,
                 summarize: Callable[[Any], Any], on_step=None, on_usage=None) -> None:
    """Train `params` of `model` for `settings.steps` steps on tokenized `data`; per step the
    losses go to `result.losses` / `result.aux_losses`, per log window the usage to
    `result.usage` and `result.usage_log`."""
    import torch

    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    schedule_of = settings.schedule()
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: learning_rate_factor(s, schedule_of))
    batches = _batches(len(data), settings.batch_size, settings.seed)
    with model.training_session(settings.seed):
        for step in range(1, settings.steps + 1):
            batch = _collate([data[i] for i in next(batches)], tokenizer.pad_token_id)
            model.context.mask = batch["attention_mask"].flatten().bool()
            loss = answer_loss(model, batch)  # mean cross-entropy over answer tokens
            aux = model.aux_loss()
            (loss + aux_weight * aux).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            result.losses.append(float(loss.detach()))
            result.aux_losses.append(float(aux.detach()))
            if on_step is not None:
                on_step(step, result.losses[-1], result.aux_losses[-1])
            if step % settings.log_every == 0 or step == settings.steps:
                result.usage = model.usage_shares()
                result.usage_log.append({"step": step, "usage": summarize(result.usage)})
                if on_usage is not None:
                    on_usage(step, result.usage)
                log.info("step %d: loss %.3f, balance %.4f", step, result.losses[-1],
                         result.aux_losses[-1])
                model.reset_usage()
