"""usnav: intraoperative ultrasound toolkit.

Trackerless freehand 3D ultrasound reconstruction (TUS-REC), volume
compounding, and iUS-MRI brain-shift registration (ReMIND2Reg).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
