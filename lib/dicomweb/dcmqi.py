"""dcmqi's `itkimage2segimage`, which MONAI Label runs to write DICOM SEG, from the `dcmqi` pip package.

MONAI Label downloads dcmqi from GitHub when it starts a DICOMweb datastore and runs
`itkimage2segimage` found on PATH. Nothing may download here, so the pinned `dcmqi`
package (which ships the same tools, built for manylinux) provides them instead.
"""

import os
from pathlib import Path

import dcmqi

SEG_WRITER = "itkimage2segimage"


def use_packaged_dcmqi() -> Path:
    """Put the `dcmqi` package's tools first on PATH (for this process and its children); returns their folder."""
    folder = Path(dcmqi.__file__).resolve().parent / "bin"
    if not os.access(folder / SEG_WRITER, os.X_OK):
        raise RuntimeError(f"{folder / SEG_WRITER} is missing or not executable: reinstall the `dcmqi` package")
    paths = os.environ.get("PATH", "").split(os.pathsep)
    if str(folder) not in paths:
        os.environ["PATH"] = os.pathsep.join([str(folder), *paths])
    return folder
