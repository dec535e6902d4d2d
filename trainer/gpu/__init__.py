"""Training on a lent GPU machine, which carries PyTorch and numpy but not TensorFlow (issue 12, item 6).

Faces go there as a faces archive and results come back as small files (:mod:`trainer.gpu.handoff`):
teachers' probabilities (:mod:`trainer.gpu.teachers`) and a student's weights (:mod:`trainer.gpu.student`), both
trained on the faces of :mod:`trainer.gpu.faces` by the loop of :mod:`trainer.gpu.loop`. Nothing here imports
TensorFlow (of the trainer, only the handoff's files, :mod:`trainer.model.views` and :mod:`trainer.fit.ema`, all
numpy), and nothing in the tests or the README's figures needs a GPU: these modules run on a CPU too, slowly.
"""
