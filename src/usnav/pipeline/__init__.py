"""The joined pipeline: freehand sweep -> trackerless poses -> 3D iUS volume ->
registration of the preoperative MRI -> brain-shift-corrected MRI, with a report.

>>> from usnav.pipeline import run
>>> result = run("scan.h5", mri=["ceT1.nii.gz", "T2.nii.gz"], init_pose="pose.txt", out="out/")
>>> result.report          # out/report.html

Each stage is a function of :mod:`usnav.pipeline.stages` (``load_sweep``,
``estimate_poses``, ``compound_sweep``, ``resample_to_grid``,
``register_mri_to_us``, ``map_points_to_mri``).
"""

from usnav.pipeline.run import PipelineResult, run

__all__ = ["PipelineResult", "run"]
