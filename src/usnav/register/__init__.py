"""iUS-MRI deformable registration (ConvexAdam-style, plain torch on CPU).

Frames: everything works on the fixed (iUS) grid's stored array axes, voxel
units; displacement fields are pull/backward maps (moving sampled at
``x + u(x)``), shape (X, Y, Z, 3), channel k along array axis k.
"""

__all__: list[str] = []
