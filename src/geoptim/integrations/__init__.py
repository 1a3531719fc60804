"""Framework integrations, imported on demand (each needs its framework installed).

* :mod:`geoptim.integrations.transformers`: ``PScheduleCallback``,
  a Hugging Face ``TrainerCallback`` that runs the cosine p schedule per epoch or per step.

Lightning needs no integration: :class:`geoptim.CosinePScheduler` is a
``torch.optim.lr_scheduler.LRScheduler``, so ``configure_optimizers`` returns it like any LR
scheduler and Lightning steps and checkpoints it (see the Lightning guide in the docs).
"""
