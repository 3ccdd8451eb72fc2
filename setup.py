"""Installable package of the MLVICX-on-MONAI chest X-ray pipeline."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="mlvicx-monai",
    version="0.1.0",
    description="MLVICX self-supervised chest X-ray pretraining and transfer on MONAI, tracked in MLflow",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mlvicx_monai", "mlvicx_monai.*", "pipelines", "pipelines.*"]),
    include_package_data=True,
    install_requires=[
        # CPU machines: install torch==2.13.0 first (see README); any torch >= 2.4 works.
        "torch>=2.4",
        "monai[ignite,itk,nibabel,skimage,pydicom,mlflow,tqdm]>=1.5,<1.7",
        "pytorch-ignite>=0.4.11",
        # the MONAI bundle command line (`python -m monai.bundle run/verify_metadata`) needs these
        "fire>=0.5",
        "jsonschema>=4.0",
        # DICOM decoding and the plugins for compressed transfer syntaxes:
        # libjpeg (JPEG baseline/extended/lossless), openjpeg (JPEG 2000), pylibjpeg-rle (RLE), pyjpegls (JPEG-LS).
        "pydicom>=3.0",
        "pylibjpeg>=2.0",
        "pylibjpeg-libjpeg>=2.1",
        "pylibjpeg-openjpeg>=2.3",
        "pylibjpeg-rle>=2.0",
        "pyjpegls>=1.4",
        "nibabel>=5.0",
        "itk>=5.3",
        "scikit-image>=0.22",
        "scikit-learn>=1.3",
        "threadpoolctl>=3.1",  # one BLAS thread in the ingestion workers' resize (mlvicx_monai.data.resample)
        "scipy>=1.10",
        "opencv-python-headless>=4.8",  # top-hats of the burned-in text detector (mlvicx_monai.data.burned_in)
        "pandas>=2.0",
        "numpy>=1.24",
        "pillow>=10.0",
        "pyyaml>=6.0",
        "mlflow>=3.0",
        "tqdm>=4.60",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-timeout>=2.2", "pytest-xdist>=3.5", "pydicom-data>=1.0", "ruff>=0.6"],
    },
)
