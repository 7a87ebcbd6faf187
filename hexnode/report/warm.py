"""Build one throw-away result set when a worker starts, so that its first job does not pay for
what the report libraries load once per process.

highdicom reads its IOD and module tables (JSON, about 0.5 s) on the first SEG/SR/SC it builds,
and Pillow loads the summary image's font; a worker's first report took 0.8-1.3 s against
0.25 s for every later one (bench/report.py). The series here is made up in memory (4 slices of
32 x 32, no patient), and nothing is written or logged.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from hexnode.pipeline.contracts import ModelInfo, Prediction

SIZE = 32
SLICES = 4


def _headers() -> list[Dataset]:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(SLICES):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "", "", "", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 5.0
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        out.append(ds)
    return out


def warm_up(model: ModelInfo) -> list[Dataset]:
    """Build a SEG, SR and SC for a made-up series with `model`'s name and version, and encode
    them as the worker does; returned for the tests, dropped by the worker."""
    from hexnode.pipeline.run import encode
    from hexnode.report import build_results

    hu = np.full((SLICES, SIZE, SIZE), 30.0, np.float32)
    mask = np.zeros(hu.shape, np.uint8)
    mask[1:3, 10:20, 12:22] = 1
    prediction = Prediction(volume_ml=0.2, probability=0.5, model=model)
    datasets = build_results(_headers(), hu, mask, prediction)
    for ds in datasets:
        encode(ds)
    return datasets
