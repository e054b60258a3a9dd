"""The MLX backend (mlx-lm): MLX model folders, and GGUF files converted to one on first use.

One prompt cache holds one live sequence. A new prompt reuses its longest common prefix with
that sequence (the cache is trimmed back to it, or rebuilt when its layers cannot be trimmed),
mirroring the llama.cpp backend. ``_live`` always names exactly the tokens the cache holds, also
after a cancelled or closed generation, so the next prompt never reuses stale keys and values.

As in the llama.cpp backend, a prompt that would throw away a large part of the live sequence
(another conversation) first saves a copy of it to a byte-bounded LRU of saved caches, and a
prompt sharing more with a saved cache than with the live one gets that cache back: alternating
between conversations does not re-prefill either of them.
"""

from __future__ import annotations

import codecs
import copy
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pensieve_server.anthropic.template import CHATML_TEMPLATE, END_OF_TURN_TEXTS
from pensieve_server.engine import devices
from pensieve_server.engine.base import (
    Backend,
    EngineError,
    ModelInfo,
    ModelLoadError,
    PrefixMatch,
    SamplingParams,
    Step,
)
from pensieve_server.engine.constraint import TokenGrammars
from pensieve_server.engine.saved_states import (
    DEFAULT_CACHE_BYTES,
    SavedStates,
    common_prefix,
    prompt_keep,
    worth_saving,
)
from pensieve_server.models.store import ModelEntry, ModelStore

log = logging.getLogger(__name__)

# Small enough that a cancel during a long prefill is noticed quickly, large enough to batch well.
PREFILL_STEP = 512


class _PrefillCancelled(Exception):
    """Raised from the prefill progress callback to abandon a prompt whose client went away."""


def _nbytes(cache: list[Any]) -> int:
    return sum(int(getattr(layer, "nbytes", 0) or 0) for layer in cache)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character → byte table (byte-level BPE token strings are spelled with it)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _decoder_kind(hf_tokenizer: Any) -> str:
    """"bytelevel" when the tokenizer's decoder is GPT-2 byte-level, else "other"."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None) or getattr(hf_tokenizer, "_tokenizer", None)
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except Exception:  # noqa: BLE001 - slow tokenizers have no tokenizers.Tokenizer behind them
        return "other"
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", []) or []]
    return "bytelevel" if "ByteLevel" in kinds else "other"


class MlxBackend(Backend):
    name = "mlx"

    def __init__(self, model: Any, tokenizer: Any, info: ModelInfo, device: str = "cpu",
                 cache_bytes_limit: int = DEFAULT_CACHE_BYTES) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        self._model = model
        self._tokenizer = tokenizer  # mlx-lm's TokenizerWrapper
        self._hf = getattr(tokenizer, "_tokenizer", tokenizer)
        self.info = info
        self.device = device
        self._make_cache: Callable[[], list[Any]] = lambda: make_prompt_cache(model)
        self._cache: list[Any] = self._make_cache()
        self._live: list[int] = []  # exactly the tokens whose keys/values are in self._cache
        self._saved: SavedStates[list[Any]] = SavedStates(cache_bytes_limit)
        self._closed = False
        self._special = self._special_ids()
        self._stop_tokens = self._find_stop_tokens()
        self._bytelevel = _decoder_kind(self._hf) == "bytelevel"
        self._pieces: dict[int, bytes] = {}
        self._grammars: TokenGrammars | None = None  # llguidance's view of the vocabulary (prepare_constraints)

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, entry: ModelEntry, store: ModelStore, context_length: int = 0,
             cache_bytes_limit: int = DEFAULT_CACHE_BYTES, device: str | None = None, **options: Any) -> MlxBackend:
        """Load ``entry``: an MLX folder as is, a GGUF through its (cached) MLX conversion.

        ``cache_bytes_limit`` bounds the saved copies of other conversations' caches (0: none kept).
        ``device``: where MLX computes, as :func:`devices.mlx_gpu` says (the factory passes it; None:
        ask it here).
        """
        device = devices.mlx_gpu() if device is None else device
        if device is None:
            raise ModelLoadError("MLX does not import on this machine; pip install mlx-lm")
        if entry.format == "gguf":
            from pensieve_server.models.gguf_to_mlx import ensure_mlx_model

            folder = ensure_mlx_model(entry, store)
        elif entry.format == "mlx":
            folder = entry.weights
            if not (folder / "config.json").is_file():
                raise ModelLoadError(f"{entry.name}: {folder} is not an MLX model folder (no config.json); "
                                     "re-install the model")
        else:
            raise ModelLoadError(f"{entry.name} has format {entry.format!r}; MLX runs MLX folders and GGUF files")
        try:
            import mlx.core as mx
            from mlx_lm.utils import load as mlx_load

            model, tokenizer, config = mlx_load(str(folder), return_config=True)
            if device == "cpu":
                # MLX computes float16 slowly and inexactly on a CPU; float32 scales are ~40x faster there.
                model.set_dtype(mx.float32)
                mx.eval(model.parameters())
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - mlx-lm raises ValueError, KeyError, FileNotFoundError, ...
            raise ModelLoadError(f"MLX could not load {entry.name} from {folder}: {exc}") from None
        info = cls._model_info(entry, tokenizer, config, context_length)
        return cls(model, tokenizer, info, device, cache_bytes_limit, **options)

    @staticmethod
    def _model_info(entry: ModelEntry, tokenizer: Any, config: dict[str, Any], context_length: int) -> ModelInfo:
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        template = getattr(hf, "chat_template", None)
        if not isinstance(template, str) or not template:
            log.warning("%s has no chat template in its tokenizer config; using ChatML", entry.name)
            template = CHATML_TEMPLATE
        trained = int(config.get("max_position_embeddings") or 0) or entry.context_length
        if trained <= 0:
            trained = 4096
        n_ctx = min(trained, context_length) if context_length > 0 else trained
        return ModelInfo(
            name=entry.name,
            context_length=n_ctx,
            chat_template=template,
            bos_token=str(getattr(hf, "bos_token", None) or ""),
            eos_token=str(getattr(hf, "eos_token", None) or ""),
        )

    def _special_ids(self) -> frozenset[int]:
        """Control tokens: they add no text to a streamed answer (llama.cpp's pieces do the same)."""
        ids = set(getattr(self._hf, "all_special_ids", []) or [])
        for index, token in (getattr(self._hf, "added_tokens_decoder", {}) or {}).items():
            if getattr(token, "special", False):
                ids.add(int(index))
        return frozenset(ids)

    def _find_stop_tokens(self) -> frozenset[int]:
        """EOS ids (config and tokenizer) plus known end-of-turn tokens that are single special tokens."""
        stops = {int(t) for t in (getattr(self._tokenizer, "eos_token_ids", None) or ())}
        eos = getattr(self._hf, "eos_token_id", None)
        if eos is not None:
            stops.add(int(eos))
        for text in END_OF_TURN_TEXTS:
            tokens = self.tokenize(text)
            if len(tokens) == 1 and tokens[0] in self._special:
                stops.add(tokens[0])
        return frozenset(stops)

    # -- tokens ------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return list(self._hf.encode(text, add_special_tokens=False))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._hf.decode(list(tokens), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def is_stop_token(self, token: int) -> bool:
        return token in self._stop_tokens

    def _piece(self, token: int) -> bytes:
        """The bytes ``token`` adds to a byte-level BPE answer (special tokens add none), cached."""
        piece = self._pieces.get(token)
        if piece is None:
            if token in self._special:
                piece = b""
            else:
                text = self._hf.convert_ids_to_tokens(token) or ""
                table = _BYTE_DECODER
                piece = b"".join(bytes([table[c]]) if c in table else c.encode("utf-8") for c in text)
            self._pieces[token] = piece
        return piece

    def _text_stream(self) -> Callable[[int], str]:
        """A per-generation function turning each sampled token into the text it completes."""
        if self._bytelevel:
            decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode  # never splits a character
            return lambda token: decode(self._piece(token))
        detokenizer = self._tokenizer.detokenizer
        detokenizer.reset()

        def text(token: int) -> str:
            if token in self._special:
                return ""
            detokenizer.add_token(token)
            return detokenizer.last_segment

        return text

    # -- generation --------------------------------------------------------------------------------
    def stream(self, prompt: Sequence[int], params: SamplingParams, cancel: threading.Event
               ) -> Iterator[Step | PrefixMatch]:
        if self._closed:
            raise EngineError("the model was unloaded")
        self.check_prompt(prompt)
        n_ctx = self.info.context_length
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        tokens = [int(t) for t in prompt]
        cached = self._reuse_prefix(tokens)
        yield PrefixMatch(cached, min(self.restored_from_disk, cached))
        # generate_step's token history starts at the first token it evaluates
        sampler, processors = self._sampling(params, len(tokens) - cached)

        def progress(_done: int, _total: int) -> None:
            if cancel.is_set():
                raise _PrefillCancelled

        seen = list(tokens)  # the prompt and every token handed out: what the cache can hold
        steps = generate_step(
            mx.array(tokens[cached:], dtype=mx.uint32),
            self._model,
            max_tokens=-1,
            sampler=sampler,
            logits_processors=processors or None,
            prompt_cache=self._cache,
            prefill_step_size=PREFILL_STEP,
            prompt_progress_callback=progress,
        )
        text_of = self._text_stream()
        try:
            for token, _ in steps:
                token = int(token)
                seen.append(token)
                yield Step(token, text_of(token), cached)
                cached = 0
                if cancel.is_set() or len(seen) >= n_ctx:
                    return  # cancelled, or the context is full
        except _PrefillCancelled:
            return
        except GeneratorExit:
            raise
        except Exception:
            self._reset()  # the cache may hold part of a failed step
            raise
        finally:
            steps.close()
            self._settle(seen)
            self._offer_to_disk(self._cache, self._live)

    def _sampling(self, params: SamplingParams, history_prompt_len: int) -> tuple[Callable[[Any], Any], list[Any]]:
        """mlx-lm's sampler and logits processors for ``params``.

        ``history_prompt_len``: how many prompt tokens open the token history mlx-lm hands the
        processors (the repeat penalty skips them). A seed reseeds MLX's global generator.
        """
        import mlx.core as mx
        from mlx_lm.sample_utils import make_sampler

        if params.seed is not None:
            mx.random.seed(params.seed & 0xFFFFFFFF)
        greedy = params.temperature <= 0 or params.top_k == 1
        sampler = make_sampler(
            temp=0.0 if greedy else params.temperature,
            top_p=params.top_p if 0 < params.top_p < 1 else 0.0,
            top_k=max(params.top_k, 0),
        )
        penalise = params.repeat_penalty != 1.0 and params.repeat_last_n > 0
        processors = [self._repeat_penalty(params, history_prompt_len)] if penalise else []
        grammar = self._grammar_processor(params, history_prompt_len)
        return sampler, processors + ([grammar] if grammar is not None else [])

    def _grammar_processor(self, params: SamplingParams, prompt_len: int) -> Callable[[Any, Any], Any] | None:
        """A logits processor masking what the request's grammar forbids (engine/constraint.py).

        mlx-lm builds step n+1 before handing out token n, so the processor reads the sampled tokens
        from the history it is given rather than waiting for the caller.
        """
        if params.constraint is None:
            return None
        run = self._token_grammars().start(params.constraint)
        if run is None:
            return None
        import mlx.core as mx

        seen = 0

        def process(history: Any, logits: Any) -> Any:
            nonlocal seen
            for token in history[prompt_len + seen:].tolist():
                run.accept(int(token), self._piece(int(token)) if self._bytelevel else self.detokenize([token]).encode())
                seen += 1
            mask = run.allowed(logits.shape[-1])
            return logits if mask is None else mx.where(mx.array(mask), logits, -mx.inf)

        return process

    def _token_grammars(self) -> TokenGrammars:
        if self._grammars is None:
            self._grammars = TokenGrammars(self._ll_tokenizer, 0)
        return self._grammars

    def prepare_constraints(self) -> None:
        self._token_grammars().build_in_background()

    def _ll_tokenizer(self) -> Any:
        from llguidance.hf import from_tokenizer

        return from_tokenizer(self._hf, eos_token=sorted(self._stop_tokens))

    @staticmethod
    def _repeat_penalty(params: SamplingParams, prompt_len: int) -> Callable[[Any, Any], Any]:
        """llama.cpp's repeat penalty: only generated tokens (not the prompt) enter its history."""
        import mlx.core as mx

        penalty, window = params.repeat_penalty, params.repeat_last_n

        def process(history: Any, logits: Any) -> Any:
            recent = history[prompt_len:][-window:]
            if recent.size == 0:
                return logits
            picked = logits[:, recent]
            logits[:, recent] = mx.where(picked < 0, picked * penalty, picked / penalty)
            return logits

        return process

    # -- prefix cache ------------------------------------------------------------------------------
    def _offset(self) -> int:
        """How many tokens the cache's layers hold (they all hold the same number)."""
        return int(getattr(self._cache[0], "offset", 0)) if self._cache else 0

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Bring the cache to the longest available prefix of ``prompt`` (live or saved); return its length.

        At least one prompt token is always left to evaluate, since sampling needs fresh logits.
        """
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        if self._offset() != len(self._live):
            self._reset()  # never trust a cache whose length we did not record
        shared = common_prefix(self._live, prompt)
        if worth_saving(len(self._live), shared):
            self._save_live()
        # Only now: saving can evict or supersede saved states, which moves their indices.
        better = self._saved.better_than(prompt, shared)
        if better is not None:
            saved, saved_shared = better
            if saved_shared >= len(saved.tokens) or can_trim_prompt_cache(saved.payload):
                self._cache = copy.deepcopy(saved.payload)  # the saved copy stays untouched by what comes next
                self._live = saved.tokens.tolist()
                shared = saved_shared
        restored = self._restore_from_disk(prompt, shared)
        if restored is not None:
            self._cache, self._live = restored
            shared = min(common_prefix(self._live, prompt), len(self._live))
        keep = prompt_keep(shared, len(prompt))
        if keep < len(self._live):
            if keep > 0 and can_trim_prompt_cache(self._cache):
                trim_prompt_cache(self._cache, len(self._live) - keep)
                self._live = self._live[:keep]
            else:
                self._reset()
                keep = 0
        return keep

    def _save_live(self) -> None:
        """Keep a copy of the live sequence's cache before another conversation replaces it."""
        import mlx.core as mx

        if not self._live or self._saved.covers(self._live):
            return
        size = _nbytes(self._cache)
        if size > self._saved.limit_bytes:
            return
        saved = copy.deepcopy(self._cache)
        mx.eval([layer.state for layer in saved])  # a copy of its own, not a lazy view of the live arrays
        self._saved.add(self._live, saved, size)

    # -- prefix states on disk -----------------------------------------------------------------------
    def disk_identity(self, weights: Path) -> dict[str, Any]:
        import mlx.core as mx
        from mlx.utils import tree_flatten

        from pensieve_server import __version__
        from pensieve_server.engine.disk_states import file_identity

        params = tree_flatten(self._model.parameters()) if self._model is not None else []
        dtype = str(params[0][1].dtype) if params else "?"
        return {"engine": "mlx", "version": f"mlx {mx.__version__}, mlx-lm {_mlx_lm_version()}",
                "converter": __version__, "model": file_identity(weights), "device": self.device, "dtype": dtype,
                "n_ctx": self.info.context_length, "layout": type(self).__name__}

    def _restore_from_disk(self, prompt: list[int], shared: int) -> tuple[list[Any], list[int]] | None:
        """``(cache, tokens)`` of the disk state sharing most of ``prompt`` when it beats ``shared``, else None."""
        from mlx_lm.models.cache import can_trim_prompt_cache

        from pensieve_server.engine import mlx_states

        disk, candidate = self.disk, self.disk_candidate(prompt, shared)
        if disk is None or candidate is None:
            return None
        entry, disk_shared, payload = candidate
        try:
            layers = mlx_states.restore(payload)
        except ValueError as exc:
            disk.reject(entry, str(exc))
            return None
        if int(getattr(layers[0], "offset", -1)) != len(entry.tokens):
            disk.reject(entry, "its cache does not hold its tokens")
            return None
        if disk_shared < len(entry.tokens) and not can_trim_prompt_cache(layers):
            return None
        self.restored_from_disk = disk_shared
        log.info("restored a prefix state of %d tokens from disk", disk_shared)
        return layers, entry.tokens.tolist()

    def _offer_to_disk(self, layers: list[Any], tokens: list[int]) -> None:
        """Hand a cache to the disk store when it is long and new enough (packed and written in the background)."""
        from pensieve_server.engine import mlx_states

        disk = self.disk
        if disk is None or self._closed or not layers or not disk.wants(tokens):
            return
        if int(getattr(layers[0], "offset", -1)) != len(tokens):
            return
        disk.save(list(tokens), mlx_states.snapshot(layers))

    def _settle(self, seen: list[int]) -> None:
        """Record which tokens the cache really holds after a generation ended, however it ended."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        if self._closed:
            return
        offset = self._offset()
        if offset <= len(seen):
            self._live = seen[:offset]
        elif can_trim_prompt_cache(self._cache):  # a step ran past the last token handed out
            trim_prompt_cache(self._cache, offset - len(seen))
            self._live = seen
        else:
            self._reset()

    def _reset(self) -> None:
        self._cache = self._make_cache()
        self._live = []

    def cache_bytes(self) -> int:
        if self._closed:
            return 0
        return self._saved.bytes + _nbytes(self._cache)

    def close(self) -> None:
        if not self._closed:
            _finish_pending_work()
            if self._grammars is not None:
                self._grammars.wait_for_build()
            if self.disk is not None:
                self.disk.close()
            self._closed = True
            self._cache = []
            self._live = []
            self._saved.clear()
            self._pieces.clear()
            self._model = None


def _mlx_lm_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("mlx-lm")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _finish_pending_work() -> None:
    """Wait for MLX's queued work (mlx-lm evaluates the next token asynchronously on its own stream).

    Freeing the model or ending the process while a CPU stream still runs it aborts the whole
    process ("terminate called without an active exception", seen with MLX 0.32 on Linux).
    """
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    mx.synchronize(generation_stream)
    mx.synchronize()


_BYTE_DECODER = _byte_decoder()
