from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="opt-tri",
    version="0.1.0",
    description="OPT-Tri: tri-modal (text + image + audio) pre-training for Hugging Face Transformers",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_opt_tri", "modeling_opt_tri.*"]),
    package_data={"modeling_opt_tri": ["metrics/*/*.py"]},
    install_requires=[
        # torch is deliberately not pinned here: install torch==2.13.0 (CPU wheel) first, see README.
        "torch>=2.4",
        "transformers>=5.0,<6",
        "accelerate>=1.0",
        "datasets>=3.0",
        "safetensors>=0.4",
        "huggingface-hub>=0.30",
        "evaluate>=0.4",
        "tokenizers>=0.20",
        "numpy>=1.24",
        "scipy>=1.10",
        "pillow>=10.0",
        "soundfile>=0.12",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
    ],
    extras_require={
        "dev": ["pytest>=8", "peft>=0.13"],
        "peft": ["peft>=0.13"],
    },
)
