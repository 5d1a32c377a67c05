from setuptools import find_packages, setup

setup(
    name="advunlearn",
    version="0.1.0",
    description="Robust concept erasure (AdvUnlearn) for Stable Diffusion v1.x text encoders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # kernels/ and cli/ sit at the top of the repository (the design card's layout) but are
    # installed inside the package: top-level `kernels` and `cli` imports belong to other
    # projects (Hugging Face's `kernels`, which diffusers looks for).
    packages=find_packages(include=["advunlearn_fast", "advunlearn_fast.*"]) + ["advunlearn_fast.kernels", "advunlearn_fast.cli"],
    package_dir={"advunlearn_fast.kernels": "kernels", "advunlearn_fast.cli": "cli"},
    include_package_data=True,
    # evaluation/prompt_sets/ and data/: the authors' prompt sets (MIT, with LICENSE) and retain prompts
    # (CC BY 4.0, with NOTICE.md).
    package_data={"advunlearn_fast": ["world/weights/*", "world/weights/*/*", "evaluation/prompt_sets/*", "data/*"]},
    install_requires=[
        "torch>=2.1",
        # Tested with diffusers 0.42.1 and transformers 5.17 and 5.24: the attack feeds embeddings
        # through transformers 5's CLIP parts, and 4.x cannot build the tokenizer in code. What it
        # writes still loads in transformers 4.x.
        "diffusers>=0.42",
        "transformers>=5.17",
        "safetensors",
        "accelerate",
        "huggingface_hub",
        "click>=8.0",
        "tqdm",
        "pyyaml",
        "tomli; python_version<'3.11'",
        "matplotlib",
        "numpy",
        "pillow",
    ],
    extras_require={
        "gpu": ["xformers", "bitsandbytes", "triton"],
        # scipy: the tests check the Fréchet distance against the usual sqrtm formula.
        # bitsandbytes: its 8-bit Adam runs (slowly) on a CPU, and the tests train with it.
        # nudenet: its ONNX detector ships in the wheel, so the judge is tested offline. 3.0.8's
        # best.onnx is the authors' network byte for byte; 3.4 ships another (320n.onnx).
        "dev": ["pytest", "triton", "scipy", "bitsandbytes", "nudenet==3.0.8"],
        "nudenet": ["nudenet==3.0.8"],
    },
    entry_points={"console_scripts": ["advunlearn=advunlearn_fast.cli.main:main"]},
)
