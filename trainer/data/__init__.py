"""Data: the datasets in every layout they come in, the protocols' folds, the faces a run trains on (one
preprocessing path), and the tf.data pipeline with its batched augmentation."""
