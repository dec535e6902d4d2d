"""Training on a lent GPU machine, which carries PyTorch and numpy but not TensorFlow (issue 12, item 6).

Faces go there as a faces archive and results come back as small files (:mod:`trainer.handoff`):
teachers' probabilities (:mod:`trainer.gpu.teachers`). Nothing here imports TensorFlow, and
nothing in the tests or the README's figures needs a GPU: these modules run on a CPU too, slowly.
"""
