"""Which engine can run which model file: the format and, for GGUF, the architecture decide.

llama.cpp runs GGUF files of the architectures below; MLX runs MLX folders, and GGUF files whose
architecture the GGUF→MLX conversion knows. ``models list``/``info``, import, pull and engine
choice all ask :func:`engines_for` or :func:`check_architecture`, so they never disagree.
"""

from __future__ import annotations

from pensieve_server.models.store import ModelEntry, ModelError

# Architectures (``general.architecture``) that llama.cpp runs as text-generating models: the
# families of llama.cpp's LLM_ARCH_NAMES that Pensieve can serve. Mistral, Mixtral, SmolLM2,
# CodeLlama and many fine-tunes are stored as "llama". Only "llama" is also converted for MLX.
LLAMACPP_ARCHITECTURES = frozenset({
    "llama", "llama4", "deci", "mistral3", "mistral4",
    "qwen", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "qwen3next",
    "phi2", "phi3", "phimoe",
    "gemma", "gemma2", "gemma3", "gemma3n",
    "granite", "granitemoe", "granitehybrid",
    "starcoder", "starcoder2", "smollm3", "olmo", "olmo2", "olmoe", "deepseek", "deepseek2",
    "falcon", "falcon-h1", "gpt2", "gptj", "gptneox", "mpt", "baichuan", "refact", "bloom", "stablelm",
    "internlm2", "minicpm", "minicpm3", "command-r", "cohere2", "exaone", "exaone4", "chatglm", "glm4",
    "glm4moe", "gpt-oss", "lfm2", "ernie4_5", "ernie4_5-moe", "hunyuan-moe", "hunyuan-dense", "seed_oss",
    "nemotron", "arcee", "apertus", "openelm", "orion", "xverse", "jais", "bitnet", "dbrx", "arctic",
    "codeshell", "plamo", "plamo2", "mamba", "mamba2", "jamba", "rwkv6", "rwkv7", "bailingmoe",
    "dots1", "smallthinker", "plm", "chameleon",
})
MLX_CONVERTIBLE = frozenset({"llama"})  # GGUF architectures the GGUF→MLX conversion handles
# Models in GGUF files that are not chat models at all: said plainly rather than "unsupported".
NOT_CHAT_MODELS = {
    "clip": "a vision projector (mmproj) that belongs beside a chat model, not a model of its own",
    "bert": "an embedding model", "nomic-bert": "an embedding model", "nomic-bert-moe": "an embedding model",
    "jina-bert-v2": "an embedding model", "jina-bert-v3": "an embedding model", "neo-bert": "an embedding model",
    "modern-bert": "an embedding model", "eurobert": "an embedding model", "gemma-embedding": "an embedding model",
    "t5encoder": "a text encoder", "wavtokenizer-dec": "an audio decoder",
}


def check_architecture(arch: str, label: str) -> None:
    """Refuse what llama.cpp cannot run as a chat model, saying what the file is when we know."""
    if arch in LLAMACPP_ARCHITECTURES:
        return
    if arch in NOT_CHAT_MODELS:
        raise ModelError(f"{label} is {NOT_CHAT_MODELS[arch]} (architecture {arch!r}), not a chat model "
                         "Pensieve can serve")
    families = "llama (also Mistral, SmolLM2), qwen2, qwen3, phi3, gemma3, deepseek2, gpt-oss and others"
    raise ModelError(f"{label} has architecture {arch!r}, which Pensieve's llama.cpp engine does not run "
                     f"(supported: {families})")


def engines_for(entry: ModelEntry) -> tuple[str, ...]:
    """The engines that can run ``entry``, llama.cpp first: ("mlx",) for an MLX folder, llama.cpp for
    a GGUF, and MLX too when its architecture (recorded at import or pull) converts; () for other formats."""
    if entry.format == "mlx":
        return ("mlx",)
    if entry.format == "gguf":
        return ("llamacpp", "mlx") if entry.architecture in MLX_CONVERTIBLE else ("llamacpp",)
    return ()
