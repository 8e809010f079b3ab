"""Training a curve predictor from a YAML recipe (``configs/default.yaml``) and measuring it.

- :mod:`.recipe`: the YAML config, the Lightning modules and trainer it builds, a training
  run, the refit on every query, and the export as a ``ClearPredictor``;
- :mod:`.heldout`: the held-out evaluation of a trained predictor against the baselines;
- :mod:`.lofo`: leave-one-family-out folds (``train/cross_family.py``);
- :mod:`.runs`: reading a ``train/measure.py`` run back (its data as measured, its folds), for
  the scripts of ``benchmarks/``.

The scripts in ``train/`` and ``benchmarks/`` are thin command lines over these modules.
Importing this package imports neither torch nor lightning.
"""
