"""Trackerless freehand pose estimation (TUS-REC): methods, training, prediction, submission.

- :mod:`usnav.freehand.models`: the networks (``two-frame`` baseline, ``sequence``), torch only.
- :mod:`usnav.freehand.infer`: frames -> transforms for a loaded model (numpy + torch only).
- :mod:`usnav.freehand.decorrelation`: the classical ``decorrelation`` method.
- :mod:`usnav.freehand.data`, :mod:`usnav.freehand.train`, :mod:`usnav.freehand.checkpoint`: training (DDP-ready).
- :mod:`usnav.freehand.predict`: named methods over a data set -> prediction files.
- :mod:`usnav.freehand.submission`: the TUS-REC 2025 docker-harness folder.
- :mod:`usnav.freehand.simdata`: time-cropped simulated scans for small CPU budgets.

See docs/freehand.md.
"""

METHODS = ("identity", "decorrelation", "two-frame", "sequence")
