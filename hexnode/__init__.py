"""hexnode: a DICOM inference node that predicts hematoma expansion from head NCCT.

The bundled models are trained on synthetic data only: not for clinical use.
"""

__version__ = "0.1.0"
