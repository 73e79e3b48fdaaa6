"""Hydra structured configs: plain dataclasses of primitives.

These are the only config types the library reads; YAML files in ``hydra_conf/`` fill them and
``megatron_tulu.config.transformer.to_transformer_config`` maps them onto Megatron-Core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """A Llama-architecture decoder (RMSNorm, SwiGLU, RoPE, GQA)."""

    name: str = "tiny"
    num_layers: int = 4
    hidden_size: int = 256
    ffn_hidden_size: int = 768
    num_attention_heads: int = 4
    num_query_groups: int = 2
    kv_channels: int = 64  # head_dim
    vocab_size: int = 3999
    max_position_embeddings: int = 4096
    rotary_base: float = 500000.0
    # Llama 3.1 RoPE scaling; Megatron-Core hard-codes low/high frequency factors 1/4 and an
    # original context of 8192, so other values are refused (see validate_model).
    rope_scaling: bool = True
    rope_scaling_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    init_method_std: float = 0.02
    # Megatron pads the vocabulary to a multiple of this times TP.
    make_vocab_size_divisible_by: int = 128
    # An HF directory to initialise from (None: random init; the tiny preset builds its own).
    hf_path: str | None = None


@dataclass
class ParallelConfig:
    """Learner layout. ``dp`` is derived from the world size when left at -1."""

    name: str = "single"
    tp: int = 1
    pp: int = 1
    dp: int = -1
    cp: int = 1
    ep: int = 1
    vpp: int | None = None
    sequence_parallel: bool = False
    # Activation recompute: none | selective (core attention) | full (every layer's input kept,
    # the layer re-run in backward; what 405B needs to fit, see examples/rlvr_405b.py --dry-run)
    recompute: str = "none"
    # Megatron's DistributedOptimizer (ZeRO-1 over DP). Unset: on GPU yes, on CPU Megatron's plain
    # optimizer (what the CPU tests and the demo run); true / false: that, on either device.
    use_distributed_optimizer: bool | None = None
    distributed_timeout_minutes: int = 30


@dataclass
class PrecisionConfig:
    params_dtype: str = "fp32"  # fp32 | bf16 | fp16
    fp8: str | None = None  # None | e4m3 | hybrid (Transformer Engine, GPU only)
    # delayed | current (per-tensor current scaling) | blockwise (128-wide blocks) | mxfp8 (Blackwell)
    fp8_recipe: str = "delayed"
    fp8_amax_history_len: int = 1024  # delayed scaling only
    fp8_amax_compute_algo: str = "max"  # max | most_recent (delayed scaling only)
    fp8_param: bool = False  # keep GEMM weights in FP8 (TE's fp8 params)
    transformer_impl: str = "auto"  # auto | local | transformer_engine


@dataclass
class OptimizerConfig:
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    warmup_ratio: float = 0.03
    lr_decay_style: str = "linear"


@dataclass
class CheckpointConfig:
    save_dir: str | None = None
    save_interval: int = 0  # steps; 0: only the final checkpoint
    load_dir: str | None = None
    # false | true | auto (see engine/checkpoint.resolve_resume). Typed Any so that YAML booleans
    # stay booleans (old configs, `if cfg.checkpoint.resume`) next to the string "auto";
    # config/load.py normalises "true"/"false" strings and refuses anything else.
    resume: Any = False
    keep_last: int = 2
    verify_on_load: bool = True  # check per-file checksums before resuming (false: skip, faster)


@dataclass
class TrainConfig:
    seed: int = 1234
    micro_batch_size: int = 4
    global_batch_size: int = 16
    seq_length: int = 512
    train_iters: int = 100
    log_interval: int = 1
    output_dir: str = "outputs/run"
    # token log-probs straight from the last hidden states (megatron_tulu.kernels: no full-vocab
    # fp32 logits kept for backward); same values and gradients as the output-layer path, which
    # false restores
    fused_log_probs: bool = True


@dataclass
class RunConfig:
    """The root config every entry point composes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class DataConfig:
    """Training data: JSONL files or HF datasets saved on disk. None: the shipped embedded set."""

    train_files: list[str] | None = None
    max_seq_len: int = 4096
    packing: bool = True
    skip_bad: bool = False
    truncate: str = "right"  # right | drop
    cache_dir: str | None = None
    tokenizer: str | None = None  # tokenizer dir; default: the model's hf_path, else the embedded one


@dataclass
class LoggingConfig:
    jsonl: bool = True
    tensorboard: bool = True
    progress_bar: bool = True
    # Peak dense TFLOP/s per device for the MFU estimate (H100 bf16 ~989). 0 disables MFU.
    peak_tflops: float = 989.0


@dataclass
class TrainingRunConfig(RunConfig):
    """The root config of a training run (SFT, DPO, RLVR): the common one plus its data and logging."""

    data: DataConfig = field(default_factory=DataConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@dataclass
class SFTOptions:
    loss_reduction: str = "sum"  # sum (Tülu 3: sum over tokens / sequences in the batch) | mean (token mean)
    epochs: int = 2
    export_hf: bool = True


@dataclass
class SFTRunConfig(TrainingRunConfig):
    sft: SFTOptions = field(default_factory=SFTOptions)


@dataclass
class DPOOptions:
    loss: str = "dpo_norm"  # any name in megatron_tulu.losses.dpo.DPO_LOSSES
    beta: float = 5.0
    label_smoothing: float = 0.0
    gamma_beta_ratio: float = 0.5  # simpo
    forward_mode: str = "separate"  # separate (Tülu 3 Fig. 17) | concatenated
    epochs: int = 1
    ref_cache_dir: str | None = None  # default: <output_dir>/ref_cache
    export_hf: bool = True


@dataclass
class DPORunConfig(TrainingRunConfig):
    dpo: DPOOptions = field(default_factory=DPOOptions)


@dataclass
class RolloutConfig:
    """vLLM engines for RLVR rollouts."""

    engine_tp: int = 1
    num_engines: int = 1
    # colocated: engines share ranks with learners (the CPU default: one engine in learner rank 0's
    # process) | dedicated: engine ranks apart from the learners (Tülu 3's layout)
    placement: str = "colocated"
    gpu_memory_utilization: float = 0.3  # on CPU vLLM sizes host memory with this
    enforce_eager: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    max_prompt_len: int = 512
    samples_per_prompt: int = 1  # >1 for GRPO groups
    refit_bucket_mb: int = 64
    # What one engine rank may hold in refit buffers at once (MiB): vLLM's loaders cut each rank's
    # shard out of full-size tensors, so a receiver builds full-size buffers (outside vLLM's own
    # memory budget; the dry run adds this to the engine rank). Reload calls are split to stay
    # within it; it must hold the largest bucket (one reload group is indivisible: Llama 3.1
    # 405B's embedding is 4.2 GB full-size in bf16, +0.26 GB received at TP16 -> 4259 MiB)
    refit_receive_buffer_mb: int = 4608
    # the engines' weights: auto (the learner's dtype) | fp8_block (e4m3, 128x128 blocks with fp32
    # scales, as vLLM's fp8 method with weight_block_size [128, 128] loads; the bridge quantizes each
    # slice as it sends it). Pair fp8_block with rlvr.tis_cap (rollout/learner mismatch)
    weight_dtype: str = "auto"
    refit_timeout_s: float = 300.0  # one weight transfer (a real collective) must finish within it
    # how long a rank's heartbeat may stay still before every rank of the job stops naming it
    # (killed, hung node); independent of how long any work takes. null: refit_timeout_s
    heartbeat_timeout_s: float | None = 60.0
    # compare the engine's log-probs of every sampled token with the learner's (one more
    # log-softmax per batch): rollout/engine_logprob_gap_max|mean in the metrics
    check_logprobs: bool = False


@dataclass
class RLVROptions:
    """PPO / GRPO with verifiable rewards (Tülu 3 §6; Tab. 21 defaults)."""

    estimator: str = "gae"  # gae (PPO with a value model) | grpo
    beta: float = 0.05  # KL penalty
    kl_kind: str | None = None  # k1 | k2 | k3; null: k1 in PPO's reward penalty, k3 in GRPO's KL loss
    alpha: float = 10.0  # verifiable reward for a correct answer
    no_eos_penalty: float = -10.0
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2  # PPO clip ε (the lower bound 1 − ε; also the upper one unless clip_eps_high)
    value_clip: float = 0.2
    # --- RL options (README "RL options": defaults are Tülu 3's, sources there and in losses/rl_options.py)
    # upper clip bound 1 + ε_high; null: clip_eps. DAPO's clip-higher uses 0.28 (arXiv 2503.14476 §3.1)
    clip_eps_high: float | None = None
    # truncated importance sampling against the engine's log-probs: weight min(π_learner/π_vllm, cap)
    # per token (Yao et al. 2025; verl tis_imp_ratio_cap, e.g. 2.0); null: off
    tis_cap: float | None = None
    # reward: −β·KL in the per-token rewards (Tülu 3's PPO); loss: β·KL added to the policy loss
    # (GRPO, DeepSeekMath Eq. 4; k3 is clamped as verl's low_var_kl); null: reward for gae, loss for grpo
    kl_placement: str | None = None
    drop_constant_groups: bool = False  # groups whose rewards are all equal leave the loss (DAPO §3.2)
    mask_truncated: bool = False  # completions cut at max_new_tokens leave the policy loss (DAPO §3.4)
    # token: Σ loss / tokens (Tülu 3); sequence: mean of per-sequence token-means (GRPO paper);
    # constant: Σ loss / (sequences × loss_constant) (Dr. GRPO, arXiv 2503.20783)
    loss_aggregation: str = "token"
    loss_constant: int | None = None  # for loss_aggregation=constant; null: rollout.max_new_tokens
    # last_token: the score at the last response token; after_last: one position after it, with the
    # value bootstrapped there (Tülu 3's own script, from TRL's PPOv2). gae only
    score_placement: str = "last_token"
    grpo_std: str = (
        "unbiased"  # unbiased (Bessel: open-instruct, TRL) | population (np.std) | none (Dr. GRPO)
    )
    vf_coef: float = 0.1
    ppo_epochs: int = 4  # K update iterations per batch
    num_mini_batches: int = 1
    prompts_per_step: int = 32
    total_episodes: int = 100_000
    async_mode: bool = False  # train on the second-latest batch (Tülu 3 §6.3)
    value_model: str | None = None  # HF dir of a reward model to initialise the value model
    value_lr: float | None = None  # default: optimizer.lr
    eval_every: int = 10
    reward_workers: int = 2  # verifier worker processes (each scores with a hard time limit)
    strip_thinking: bool = False  # score only what follows <think>...</think> (or inside <answer>)
    gsm8k_rule: str = "numeric"  # numeric | open-instruct | tulu3 (string rules of the reference code)
    heldout_files: list[str] | None = None
    # per-dataset share of the training prompts, e.g. {gsm8k: 0.25}: 1 keeps all, 2 repeats, 0 drops;
    # null (or a dataset left out): keep every row
    dataset_weights: dict[str, float] | None = None
    export_hf: bool = True
    # --- launch plan (algorithms/launch_plan.py: examples/rlvr_405b.py --dry-run and RLTrainer.setup)
    # wall seconds of one RL step on the target cluster (generation + training + refit), for the dry
    # run's hours and Slurm requeues; null: no estimate unless --step-seconds is given
    expected_step_seconds: float | None = None
    # per-GPU limit of the memory plan, GB: null = the GPU's own memory (the dry run: --gpu-memory-gb);
    # 0 = no memory check
    memory_limit_gb: float | None = None


@dataclass
class RLVRRunConfig(TrainingRunConfig):
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rlvr: RLVROptions = field(default_factory=RLVROptions)
