"""Every private name of another library that strop touches, in one list.

A library may rename or reshape its private names in any release. strop patches some
(the lean layers, per-example attention, the LM head's tiles, pickle-free checkpoints)
and calls others (the chat-template helpers, sacrebleu's corpus statistics).
``tests/test_patches.py`` imports each one and checks its parameters, so a changed
library fails that test by name instead of silently running slower or computing
something else. pyproject.toml bounds each library to the releases this list was checked on.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Touched:
    where: str  # module path, then attributes after a colon: "trl.trainer.utils:_use_triton"
    used_by: str  # the strop module that depends on it
    params: tuple[str, ...] | None = None  # leading parameters a callable must still take (None: not checked)


TRAINER = "transformers.trainer:Trainer"
INVENTORY = (
    # pickle-free checkpoints: the Trainer's persistence methods, replaced on each trainer instance
    Touched(f"{TRAINER}._save_optimizer_and_scheduler", "patches.checkpoints", ("self", "output_dir")),
    Touched(f"{TRAINER}._load_optimizer_and_scheduler", "patches.checkpoints", ("self", "checkpoint")),
    Touched(f"{TRAINER}._save_rng_state", "patches.checkpoints", ("self", "output_dir")),
    Touched(f"{TRAINER}._load_rng_state", "patches.checkpoints", ("self", "checkpoint")),
    Touched(f"{TRAINER}._save_scaler", "patches.checkpoints", ("self", "output_dir")),
    Touched(f"{TRAINER}._load_scaler", "patches.checkpoints", ("self", "checkpoint")),
    Touched(f"{TRAINER}._save", "patches.checkpoints", ("self", "output_dir", "state_dict")),
    # sample ids ride along with each micro-batch (train/samples.py)
    Touched(f"{TRAINER}._set_signature_columns_if_needed", "train.samples", ("self",)),
    # the LM head scores labelled positions only, in CPU-sized tiles (patches/lm_head.py)
    Touched("trl.trainer.utils:_use_triton", "patches.lm_head", ("device",)),
    Touched("trl.trainer.utils:add_fused_lm_head", "patches.lm_head"),
    Touched("trl.trainer.utils:_ChunkedLogProbFunction", "patches.lm_head"),
    Touched("trl.trainer.utils:_CHUNKED_LOGPROB_CHUNK_SIZE", "patches.lm_head"),
    # per-example attention switches the config's attention implementation (patches/varlen.py)
    Touched("transformers.configuration_utils:PreTrainedConfig._attn_implementation", "patches.varlen"),
    Touched("transformers.modeling_utils:AttentionInterface.register", "patches.varlen"),
    # lean layers replace these modules' forward while training (patches/fused.py)
    Touched("peft.tuners.lora.layer:Linear", "patches.fused"),
    Touched("transformers.models.llama.modeling_llama:LlamaMLP.forward", "patches.fused", ("self", "x")),
    Touched("transformers.models.llama.modeling_llama:LlamaRMSNorm.forward", "patches.fused", ("self", "hidden_states")),
    Touched("transformers.models.mistral.modeling_mistral:MistralMLP.forward", "patches.fused", ("self", "x")),
    Touched("transformers.models.mistral.modeling_mistral:MistralRMSNorm.forward", "patches.fused",
            ("self", "hidden_states")),
    Touched("transformers.models.qwen2.modeling_qwen2:Qwen2MLP.forward", "patches.fused", ("self", "x")),
    Touched("transformers.models.qwen2.modeling_qwen2:Qwen2RMSNorm.forward", "patches.fused", ("self", "hidden_states")),
    Touched("transformers.models.qwen3.modeling_qwen3:Qwen3MLP.forward", "patches.fused", ("self", "x")),
    Touched("transformers.models.qwen3.modeling_qwen3:Qwen3RMSNorm.forward", "patches.fused", ("self", "hidden_states")),
    # GGUF loads share one parse of the file's header (patches/gguf_reader.py): transformers imports the
    # reader from gguf inside load_gguf_checkpoint at each call
    Touched("gguf:GGUFReader", "patches.gguf_reader", ("path", "mode")),
    Touched("transformers.modeling_gguf_pytorch_utils:load_gguf_checkpoint", "patches.gguf_reader",
            ("gguf_checkpoint_path",)),
    # bitsandbytes imports with kernels.get_kernel refusing (patches/bnb_import.py): its CPU backend calls
    # it by name at import, `from kernels import get_kernel`
    Touched("kernels:get_kernel", "patches.bnb_import", ("repo_id",)),
    # cached generation for prompt and prefix tuning (patches/prompt_cache.py): peft decides whether to inject
    # the soft prompt by the cache it finds under the old argument name
    Touched("peft.peft_model:PeftModelForCausalLM.prepare_inputs_for_generation", "patches.prompt_cache",
            ("self",)),
    # the strop command imports bitsandbytes only for 4-bit weights: these cache whether it is installed, and
    # jobs forked warm (service/warm.py): a fork lets go of the forkserver's "service alive" pipe end, so the
    # forkserver ends with its service; a started job is left out of the children multiprocessing joins at exit
    Touched("multiprocessing.forkserver:_forkserver._forkserver_alive_fd", "service.warm"),
    Touched("multiprocessing.process:_children", "service.warm"),
    # peft.helpers keeps the module it imported (patches/bnb_import.py:wanted)
    Touched("peft.import_utils:is_bnb_available.cache_clear", "patches.bnb_import"),
    Touched("peft.import_utils:is_bnb_4bit_available.cache_clear", "patches.bnb_import"),
    Touched("transformers.utils.import_utils:is_bitsandbytes_available.cache_clear", "patches.bnb_import"),
    Touched("peft.helpers:bnb", "patches.bnb_import"),
    # the chat-template sandbox renders the way transformers does (models/templates.py)
    Touched("transformers.utils.chat_template_utils:_compile_jinja_template", "models.templates", ("chat_template",)),
    Touched("transformers.utils.chat_template_utils:_normalize_chat_messages", "models.templates"),
    Touched("transformers.utils.chat_template_utils:_plain_template_data", "models.templates"),
    Touched("transformers.utils.chat_template_utils:_alias_reasoning_fields", "models.templates"),
    # bootstrap intervals for BLEU and chrF resample sacrebleu's sufficient statistics (eval/scores.py)
    Touched("sacrebleu.metrics.bleu:BLEU._extract_corpus_statistics", "eval.scores", ("self", "hypotheses", "references")),
    Touched("sacrebleu.metrics.bleu:BLEU._compute_score_from_stats", "eval.scores", ("self", "stats")),
    Touched("sacrebleu.metrics.chrf:CHRF._extract_corpus_statistics", "eval.scores", ("self", "hypotheses", "references")),
    Touched("sacrebleu.metrics.chrf:CHRF._compute_score_from_stats", "eval.scores", ("self", "stats")),
)
