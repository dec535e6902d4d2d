"""``trainer fit`` and the other ways to make a run: the training loop, warm start, distillation, weight
averaging, soups (``trainer average``) and networks trained on a GPU (``trainer import-weights``)."""
