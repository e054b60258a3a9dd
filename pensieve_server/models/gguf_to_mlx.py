"""Convert a llama-architecture GGUF file into an mlx-lm model folder, so the MLX engine can run it.

MLX reads GGUF natively and keeps Q4_0/Q4_1/Q8_0 tensors quantized (weight/scales/biases), so no
re-quantization happens: the tensors are renamed to mlx-lm's llama names, the per-tensor
quantization is written into config.json, and a Hugging Face ``tokenizers`` tokenizer is rebuilt
from the GGUF vocabulary. The folder is built beside its destination and renamed into place, so a
failed or interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pensieve_server.engine.base import ModelLoadError
from pensieve_server.models.formats.engines import MLX_CONVERTIBLE
from pensieve_server.models.formats.gguf import GgufError, read_gguf_info
from pensieve_server.models.store import ModelEntry, ModelError, ModelStore

log = logging.getLogger(__name__)

# Bumped whenever the output changes, so folders cached by an older converter are rebuilt.
CONVERTER_VERSION = 1
MARKER = "pensieve_conversion.json"
SHARD_BYTES = 4 * 1024**3

Progress = Callable[[str], None]

GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
BLOCK_PATTERN = re.compile(r"^blk\.(\d+)\.([a-z_]+)$")

# GGUF token types (llama.cpp's llama_token_attr order).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) that split like GPT-2 after isolating every digit.
DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b")
GPT2_PRE = ("gpt-2", "default", "gpt2", "")
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral")


def _say(progress: Progress | None, message: str) -> None:
    log.info(message)
    if progress is not None:
        progress(message)


def _value(metadata: dict[str, Any], key: str, default: Any = None) -> Any:
    """A GGUF metadata value as a plain Python value (MLX hands scalars and numeric lists back as arrays)."""
    value = metadata.get(key, default)
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, metadata)`` of a GGUF file, or ModelLoadError saying why it cannot be read.

    The header and metadata (vocabulary included) come from the one strict GGUF reader, so a file
    is judged here as on import and pull; MLX loads the tensors, keeping Q4_0/Q4_1/Q8_0 quantized.
    """
    try:
        metadata = read_gguf_info(path, keep_arrays=True).metadata
    except GgufError as exc:
        raise ModelLoadError(f"{path} is a corrupt or truncated GGUF file: {exc.problem}") from None
    except ModelError as exc:
        raise ModelLoadError(str(exc)) from None
    import mlx.core as mx

    try:
        tensors = mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(f"{path} is a corrupt or truncated GGUF file: {exc}") from None
    if not tensors:
        raise ModelLoadError(f"{path} is a corrupt or truncated GGUF file: it holds no tensors")
    return tensors, metadata


def _architecture(metadata: dict[str, Any], path: Path) -> str:
    arch = str(_value(metadata, "general.architecture", "") or "")
    if arch not in MLX_CONVERTIBLE:
        raise ModelLoadError(
            f"{path.name} has architecture {arch or 'unknown'!r}; the GGUF to MLX conversion supports "
            f"{', '.join(sorted(MLX_CONVERTIBLE))} only (use --engine llamacpp for it)"
        )
    return arch


def _mlx_name(gguf_name: str) -> str:
    """The mlx-lm llama module path of a GGUF tensor base name (without .weight/.scales/.biases)."""
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    match = BLOCK_PATTERN.match(gguf_name)
    if match and match.group(2) in BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{BLOCK_NAMES[match.group(2)]}"
    raise ModelLoadError(f"unexpected tensor {gguf_name!r} in the GGUF: this llama variant cannot be converted to MLX")


def build_config(metadata: dict[str, Any], arch: str, tensors: dict[str, Any]) -> dict[str, Any]:
    """The mlx-lm llama config.json (without quantization) from the GGUF hyper-parameters."""

    def need(key: str) -> Any:
        value = _value(metadata, f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(f"the GGUF lacks {arch}.{key}; it cannot be converted to MLX")
        return value

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    kv_heads = _value(metadata, f"{arch}.attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        raise ModelLoadError("per-layer key/value head counts are not supported by the MLX conversion")
    tokens = _value(metadata, "tokenizer.ggml.tokens") or []
    vocab = int(_value(metadata, f"{arch}.vocab_size", 0) or tensors["token_embd.weight"].shape[0])
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": int(_value(metadata, f"{arch}.attention.key_length", 0) or hidden // heads),
        "rms_norm_eps": float(_value(metadata, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_value(metadata, f"{arch}.rope.freq_base", 10000.0)),
        # llama.cpp permutes the q/k rows of Hugging Face checkpoints for its interleaved RoPE.
        "rope_traditional": True,
        "max_position_embeddings": int(_value(metadata, f"{arch}.context_length", 2048)),
        "vocab_size": vocab or len(tokens),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float16",
    }
    scaling = _value(metadata, f"{arch}.rope.scaling.type")
    if "rope_freqs.weight" in tensors:
        config["rope_scaling"] = llama3_rope_scaling(tensors["rope_freqs.weight"], config)
    elif scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": float(_value(metadata, f"{arch}.rope.scaling.factor", 1.0))}
    elif scaling not in (None, "none"):
        raise ModelLoadError(f"RoPE scaling {scaling!r} is not supported by the MLX conversion")
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos")):
        token = _value(metadata, f"tokenizer.ggml.{name}_token_id")
        if token is not None:
            config[key] = int(token)
    return config


def llama3_rope_scaling(factors: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The Llama 3 ``rope_scaling`` whose per-frequency factors equal the GGUF's ``rope_freqs`` tensor.

    GGUF keeps only the computed factors, mlx-lm wants the parameters, so the usual ones (Llama 3.1:
    factor 8, Llama 3.2: 32) are tried and checked against the tensor; anything else is refused.
    """
    import mlx.core as mx
    from mlx_lm.models.rope_utils import Llama3RoPE

    dims, base = config["head_dim"], config["rope_theta"]
    target = factors.astype(mx.float32)
    periods = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
    factor = round(float(target.max().item()), 3)
    for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)):
        for original in (8192, 4096, 2048, 16384, 32768):
            scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                       "high_freq_factor": high, "original_max_position_embeddings": original}
            rope = Llama3RoPE(dims, config["max_position_embeddings"], True, base, scaling)
            if target.shape == periods.shape and mx.allclose(rope._freqs / periods, target, rtol=1e-3).item():
                return scaling
    raise ModelLoadError("the GGUF's RoPE frequency factors match no Llama 3 scaling; "
                         "the MLX conversion cannot reproduce them")


def _in_dims(mlx_path: str, config: dict[str, Any]) -> int:
    """The unquantized input width of a linear/embedding module."""
    if mlx_path.endswith("o_proj"):
        return config["num_attention_heads"] * config["head_dim"]
    if mlx_path.endswith("down_proj"):
        return config["intermediate_size"]
    return config["hidden_size"]


def convert_tensors(tensors: dict[str, Any], config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(weights, quantization)``: tensors under mlx-lm names and the per-module quantization they carry.

    The quantization's top level is the most common (group_size, bits); modules that differ (the
    Q8_0 embedding of a Q4 file) or are not quantized at all (K-quants MLX casts to float16) get
    their own entry, the form mlx-lm's loader reads per module.
    """
    import mlx.core as mx

    weights: dict[str, Any] = {}
    per_module: dict[str, dict[str, int] | bool] = {}
    for name, array in tensors.items():
        base, _, kind = name.rpartition(".")
        if base == "rope_freqs":
            continue  # folded into config["rope_scaling"] by build_config
        if kind not in ("weight", "scales", "biases"):
            raise ModelLoadError(f"unexpected tensor {name!r} in the GGUF: it cannot be converted to MLX")
        mlx_path = _mlx_name(base)
        if array.dtype == mx.float32 or array.dtype == mx.bfloat16:
            array = array.astype(mx.float16)
        weights[f"{mlx_path}.{kind}"] = array
        if kind != "weight" or array.ndim != 2:
            continue
        scales = tensors.get(f"{base}.scales")
        if scales is None:
            per_module[mlx_path] = False
            continue
        in_dims = _in_dims(mlx_path, config)
        groups = scales.shape[-1]
        bits, rest = divmod(array.shape[-1] * 32, in_dims)
        if rest or in_dims % groups or bits not in (2, 3, 4, 5, 6, 8) or f"{base}.biases" not in tensors:
            raise ModelLoadError(f"tensor {name!r} has a quantized layout MLX cannot use (shape {array.shape})")
        per_module[mlx_path] = {"group_size": in_dims // groups, "bits": bits}
    quantized = [q for q in per_module.values() if isinstance(q, dict)]
    if not quantized:
        return weights, {}
    common = Counter((q["group_size"], q["bits"]) for q in quantized).most_common(1)[0][0]
    quantization: dict[str, Any] = {"group_size": common[0], "bits": common[1]}
    for path, q in sorted(per_module.items()):
        if q is False or (isinstance(q, dict) and (q["group_size"], q["bits"]) != common):
            quantization[path] = q
    return weights, quantization


def _pre_tokenizer(pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if pre in DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre in GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in LLAMA3_PRE:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise ModelLoadError(f"the GGUF's pre-tokenizer {pre!r} is not supported by the MLX conversion "
                         f"(supported: {', '.join(p for p in DIGIT_SPLIT_PRE + GPT2_PRE + LLAMA3_PRE if p)})")


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to a SentencePiece vocabulary: every split of a piece into two pieces, best score first.

    This is how Hugging Face converts SentencePiece BPE models (Llama 2, Mistral) to ``tokenizers``.
    """
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == TOKEN_NORMAL}
    merges: list[tuple[float, int, int, str, str]] = []
    for piece, index in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[index], vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


def _bpe_tokenizer(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style: SmolLM2, Llama 3) from the GGUF merges."""
    from tokenizers import Tokenizer, decoders, models

    merges: list[str] = list(_value(metadata, "tokenizer.ggml.merges") or [])
    if not merges:
        raise ModelLoadError("the GGUF's tokenizer has no merges; it cannot be converted to MLX")
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(str(_value(metadata, "tokenizer.ggml.pre", "") or ""))
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _spm_tokenizer(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> Any:
    """A SentencePiece-style BPE tokenizer with byte fallback (Llama 2, Mistral, TinyLlama) from tokens and scores."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = list(_value(metadata, "tokenizer.ggml.scores") or [])
    if len(scores) != len(tokens):
        raise ModelLoadError("the GGUF's SentencePiece vocabulary has no scores; it cannot be converted to MLX")
    unk = _value(metadata, "tokenizer.ggml.unknown_token_id")
    vocab = {token: index for index, token in enumerate(tokens)}
    model = models.BPE(vocab=vocab, merges=_spm_merges(tokens, scores, types), fuse_unk=True, byte_fallback=True,
                       unk_token=tokens[int(unk)] if unk is not None else None)
    tokenizer = Tokenizer(model)
    prefix = bool(_value(metadata, "tokenizer.ggml.add_space_prefix", True))
    # Like llama.cpp, every text fragment (also one right after a special token) gets the space prefix.
    steps_in = [normalizers.Prepend("\u2581")] if prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps_in, normalizers.Replace(" ", "\u2581")])
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def build_tokenizer(metadata: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(tokenizer, tokenizer_config)``: a ``tokenizers.Tokenizer`` rebuilt from the GGUF vocabulary."""
    from tokenizers import AddedToken, processors

    kind = _value(metadata, "tokenizer.ggml.model")
    tokens: list[str] = list(_value(metadata, "tokenizer.ggml.tokens") or [])
    types: list[int] = list(_value(metadata, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens))
    if not tokens or len(types) != len(tokens):
        raise ModelLoadError("the GGUF's tokenizer vocabulary is missing or inconsistent")
    if kind == "gpt2":
        tokenizer = _bpe_tokenizer(metadata, tokens, types)
    elif kind == "llama":
        tokenizer = _spm_tokenizer(metadata, tokens, types)
    else:
        raise ModelLoadError(f"the GGUF's tokenizer model {kind!r} is not supported by the MLX conversion "
                             "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")
    added = [
        AddedToken(token, special=kind_ == TOKEN_CONTROL, normalized=False)
        for token, kind_ in zip(tokens, types, strict=True)
        if kind_ in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
    ]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])

    def token(key: str) -> str | None:
        index = _value(metadata, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    bos, eos = token("bos"), token("eos")
    add_bos = bool(_value(metadata, "tokenizer.ggml.add_bos_token", kind == "llama")) and bos is not None
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokens.index(bos))]
        )
    elif kind == "gpt2":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_value(metadata, f"{_value(metadata, 'general.architecture')}.context_length", 2048)),
    }
    template = _value(metadata, "tokenizer.chat_template")
    if template:
        config["chat_template"] = str(template)
    return tokenizer, {k: v for k, v in config.items() if v is not None}


def _save_weights(weights: dict[str, Any], folder: Path) -> None:
    """model.safetensors, or shards with an index when the weights are large (mlx-lm loads model*.safetensors)."""
    import mlx.core as mx

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name in sorted(weights):
        nbytes = weights[name].nbytes
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = weights[name]
        size += nbytes
    if len(shards) == 1:
        mx.save_safetensors(str(folder / "model.safetensors"), shards[0], metadata={"format": "mlx"})
        return
    index: dict[str, Any] = {"metadata": {"total_size": sum(w.nbytes for w in weights.values())}, "weight_map": {}}
    for number, shard in enumerate(shards, 1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(folder / file), shard, metadata={"format": "mlx"})
        index["weight_map"].update(dict.fromkeys(shard, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def _source_stamp(gguf_path: Path) -> dict[str, Any]:
    stat = gguf_path.stat()
    return {"converter": CONVERTER_VERSION, "source": str(gguf_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def convert_gguf(gguf_path: Path, out_dir: Path, progress: Progress | None = None) -> Path:
    """Build an mlx-lm model folder at ``out_dir`` from a llama-architecture GGUF; return ``out_dir``.

    Raises ModelLoadError (nothing written) for a file that is not a readable GGUF or has an
    architecture or tokenizer the conversion does not handle.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    _say(progress, f"reading {gguf_path.name}")
    tensors, metadata = read_gguf(gguf_path)
    arch = _architecture(metadata, gguf_path)
    config = build_config(metadata, arch, tensors)
    weights, quantization = convert_tensors(tensors, config)
    if quantization:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    _say(progress, "building the tokenizer")
    tokenizer, tokenizer_config = build_tokenizer(metadata)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        _say(progress, f"writing MLX weights to {out_dir}")
        _save_weights(weights, staging)
        tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
        (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (staging / MARKER).write_text(json.dumps(_source_stamp(gguf_path), indent=2), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a stale or partial conversion
        os.replace(staging, out_dir)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, OSError):
            raise
        if is_current(out_dir, gguf_path):
            return out_dir  # another process finished the same conversion first
        raise ModelLoadError(f"writing the MLX conversion to {out_dir} failed: {exc}") from None
    _say(progress, "conversion done")
    return out_dir


def is_current(folder: Path, gguf_path: Path) -> bool:
    """True when ``folder`` holds this converter's conversion of this very GGUF file."""
    try:
        stamp = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        return stamp == _source_stamp(gguf_path) and (folder / "config.json").is_file()
    except (OSError, ValueError):
        return False


def ensure_mlx_model(entry: ModelEntry, store: ModelStore, progress: Progress | None = None) -> Path:
    """The MLX folder converted from ``entry``'s GGUF, converting it on first use (cached in the store)."""
    if not entry.weights.is_file():
        raise ModelLoadError(f"{entry.name}: weights file {entry.path} is missing; re-install the model")
    folder = store.derived_dir(entry, "mlx")
    if is_current(folder, entry.weights):
        return folder
    _say(progress, f"converting {entry.name} from GGUF to MLX (once)")
    return convert_gguf(entry.weights, folder, progress)
