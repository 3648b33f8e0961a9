"""Packaging for raunet-fast.

Layout on disk -> installed package:
    raunet_fast/  -> raunet_fast           (models, ops, CLI, data, training;
                                            Triton kernels in raunet_fast/ops/<op>/triton/)
    csrc/         -> raunet_fast/csrc      (C++/CUDA sources as package data, built
                                            with ninja at first use, never at install/import)
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "raunet_fast" / "__init__.py").read_text())[1]

packages = find_packages(include=["raunet_fast", "raunet_fast.*"])
packages += ["raunet_fast.csrc"]

setup(
    name="raunet-fast",
    version=version,
    description="RA-U-Net (residual attention U-Net) for high-resolution medical image "
                "segmentation, with fused Triton/CUDA inference kernels",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"raunet_fast.csrc": "csrc"},
    package_data={"raunet_fast.csrc": ["*.h", "*.cuh", "*.cu", "*.cpp"]},
    include_package_data=False,
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "safetensors>=0.4",   # pickle-free weights (save_pretrained / from_pretrained)
        "pillow>=9",          # ISIC JPEG / PNG reading and writing
        "nibabel>=5",         # BraTS NIfTI volumes
        "scipy>=1.10",        # distance transforms for Hausdorff / HD95, elastic fields
        "tqdm>=4.60",         # progress bars for training and evaluation
        "ninja>=1.11",        # JIT build of csrc/ extensions at first use
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        # medpy: external reference for dc/jc/hd/hd95; onnxruntime: the ONNX parity tests
        "test": ["pytest>=7", "pytest-benchmark>=4", "pytest-timeout>=2", "triton>=3.0",
                 "medpy>=0.5", "onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18",
                 "torchao>=0.12", "av>=12", "matplotlib>=3.5", "monai>=1.3"],
        "bench": ["pytest-benchmark>=4", "triton>=3.0", "onnx>=1.16", "onnxscript>=0.3",
                  "onnxruntime>=1.18"],
        "onnx": ["onnx>=1.16", "onnxscript>=0.3", "onnxruntime>=1.18"],
        "cpu-int8": ["torchao>=0.12"],
        "video": ["av>=12"],  # PyAV: raunet-fast stream reads and writes video
        # reproduce's figures and the demo's pictures
        "plots": ["matplotlib>=3.5"],
        # reproduce --peers monai: MONAI's AttentionUnet and BasicUNet as outside baselines
        "peers": ["monai>=1.3"],
    },
    entry_points={"console_scripts": ["raunet-fast=raunet_fast.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
