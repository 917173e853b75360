"""Stage 0, the data: datasets read into a `Manifest` (Kermany folders, CSV manifests, MedMNIST
npz, DICOM), patients, the validation carve, the dataset fingerprint, image decoding, the
`xray data check` audit and the built-in synthetic data.
"""

from __future__ import annotations

from featurestore.data.manifest import (
    Split,
    SPLITS,
    DatasetKind,
    POSITIVE_CLASS,
    Record,
    CarveInfo,
    Manifest,
    patient_id,
    sorted_records,
    carve_validation,
    dataset_fingerprint,
)
from featurestore.data.readers import (
    IMAGE_SUFFIXES,
    FolderScan,
    scan_folder,
    read_folder,
    read_csv,
    read_npz,
)
from featurestore.data.load import (
    load_manifest,
    check_labels_in_train,
    resolve_data_dir,
)
from featurestore.data.images import (
    ImageDecodeError,
    decode_image,
    DICOM_SUFFIXES,
    is_dicom,
    dicom_available,
    decode_dicom,
    to_rgb,
    image_from_array,
    npz_array,
)
from featurestore.data.audit import (
    SIZE_SHORTCUT_RATIO,
    AUDIT_DECODE_SIZE,
    SizeRange,
    DuplicateSet,
    DatasetAudit,
    audit_dataset,
)
from featurestore.data.synth import (
    SUBTLE_SHARE,
    SUBTLE_STRENGTH,
    CLEAR_STRENGTH,
    MARKER,
    CLASSES,
    OpacityKind,
    SynthSummary,
    Anatomy,
    draw_anatomy,
    render_radiograph,
    generate_synthetic,
)

__all__ = [
    "AUDIT_DECODE_SIZE",
    "Anatomy",
    "CLASSES",
    "CLEAR_STRENGTH",
    "CarveInfo",
    "DICOM_SUFFIXES",
    "DatasetAudit",
    "DatasetKind",
    "DuplicateSet",
    "FolderScan",
    "IMAGE_SUFFIXES",
    "ImageDecodeError",
    "MARKER",
    "Manifest",
    "OpacityKind",
    "POSITIVE_CLASS",
    "Record",
    "SIZE_SHORTCUT_RATIO",
    "SPLITS",
    "SUBTLE_SHARE",
    "SUBTLE_STRENGTH",
    "SizeRange",
    "Split",
    "SynthSummary",
    "audit_dataset",
    "carve_validation",
    "check_labels_in_train",
    "dataset_fingerprint",
    "decode_dicom",
    "decode_image",
    "dicom_available",
    "draw_anatomy",
    "generate_synthetic",
    "image_from_array",
    "is_dicom",
    "load_manifest",
    "npz_array",
    "patient_id",
    "read_csv",
    "read_folder",
    "read_npz",
    "render_radiograph",
    "resolve_data_dir",
    "scan_folder",
    "sorted_records",
    "to_rgb",
]
