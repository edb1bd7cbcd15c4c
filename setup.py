"""tsfmd: serve time-series foundation models to TDengine's TDgpt."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = {}
exec((HERE / "tsfmd" / "version.py").read_text(), VERSION)

setup(
    name="tsfmd",
    version=VERSION["__version__"],
    description="A daemon that serves time-series foundation models to TDengine TDgpt",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["tsfmd", "tsfmd.*"]),
    include_package_data=True,
    # package data, so every install layout (--user, --target, a venv) finds it by import
    package_data={
        "tsfmd": ["data/*", "data/**/*"],
        # the TDgpt adapter template (tsfmd/anode/generate.py reads it with importlib.resources)
        "tsfmd.anode": ["template/*"],
        # the web page at / (tsfmd/api/ui/__init__.py serves it)
        "tsfmd.api.ui": ["static/*"],
    },
    install_requires=[
        "waitress>=3.0",
        "flask>=3.0",
        # A range, not a pin: CI pins torch==2.13.0 (a local CPU wheel) itself.
        "torch>=2.2,<3",
        "transformers>=4.56,<6",
        "accelerate>=1.1",
        "pyyaml>=6.0",
        "requests>=2.31",
        "numpy>=1.24",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        # /metrics (tsfmd/api/metrics.py); 0.20 has disable_created_metrics
        "prometheus_client>=0.20,<1",
        # the KServe time-series API's schema objects (validation and the OpenAPI document)
        "pydantic>=2.5,<3",
        # The embedded default model: pretrained weights ship inside the wheel.
        "fracast>=0.1,<0.2",
        # The native API's request schemas: they validate requests and are /openapi.json
        "pydantic>=2.5,<3",
    ],
    extras_require={
        "chronos": ["chronos-forecasting>=2.2,<3"],
        # `tsfmd.ray` on a Ray cluster (tsfmd/ray/); 2.60 brought the deployments'
        # max_surge_percent that tsfmd ray config's rolling updates rely on
        "ray": ["ray[serve]>=2.60,<3"],
        "test": ["pytest>=8", "chronos-forecasting>=2.2,<3", "schemathesis>=4.1,<5"],
    },
    entry_points={"console_scripts": ["tsfmd = tsfmd.cli:main"]},
)
