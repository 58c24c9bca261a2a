"""``bench models``: the CLI over the checkpoint registry (:mod:`backends.checkpoints`) and the derivation of
checkpoints (:mod:`backends.prepare`), and random-weight models of a real shape (:mod:`bench.models.random`)."""
