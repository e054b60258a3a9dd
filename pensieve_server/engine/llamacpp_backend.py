"""The llama.cpp backend (llama-cpp-python): GGUF models on CPU, CUDA or Metal.

One ``Llama`` object holds one live sequence in its KV cache. A new prompt reuses the longest
common prefix with that sequence; when a prompt would throw away a large part of it (another
conversation), the sequence is first saved to a small byte-bounded cache of states so that
alternating between conversations does not re-prefill either of them.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pensieve_server.anthropic.template import CHATML_TEMPLATE, END_OF_TURN_TEXTS
from pensieve_server.engine import devices, llamacpp_log, llamacpp_state, token_fragments
from pensieve_server.engine.base import (
    Backend,
    EngineError,
    ModelInfo,
    ModelLoadError,
    PrefixMatch,
    SamplingParams,
    Step,
)
from pensieve_server.engine.constraint import ConstrainedRun, TokenGrammars
from pensieve_server.engine.sampling import Sampler, make_sampler
from pensieve_server.engine.saved_states import (
    DEFAULT_CACHE_BYTES,
    SavedStates,
    common_prefix,
    prompt_keep,
    worth_saving,
)
from pensieve_server.engine.token_fragments import FragmentTokens
from pensieve_server.models.store import ModelEntry

log = logging.getLogger(__name__)

N_BATCH = 512


def gpu_layers_to_request(device: str | None) -> int:
    """-1 (every layer) when llama.cpp computes on a GPU here (``device`` as :func:`devices.llamacpp_device`
    says), else 0."""
    return 0 if device in (None, "cpu") else -1


def offloaded_layers(llama: Any, requested: int) -> tuple[int, int]:
    """(layers on the GPU, layers in all), as llama.cpp counts them in its "offloaded N/M layers" log line:
    the repeating layers plus the output layer, all of them for a negative request, none on a CPU build."""
    import llama_cpp

    total = llama_cpp.llama_model_n_layer(llama.model) + 1
    if not llama_cpp.llama_supports_gpu_offload():
        return 0, total
    return (total if requested < 0 else min(requested, total)), total


class LlamaCppBackend(Backend):
    name = "llamacpp"
    # n_gpu_layers asked for and llama.cpp's "offloaded N/M layers" (shown by /health and status).
    gpu_layers: dict[str, int | None] | None = None

    def __init__(self, llama: Any, info: ModelInfo, device: str = "cpu", cache_bytes_limit: int = DEFAULT_CACHE_BYTES) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama
        self.info = info
        self.device = device
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._states: SavedStates[bytes] = SavedStates(cache_bytes_limit)
        self._pieces: dict[int, bytes] = {}
        self._bytes_per_token = 0
        self._closed = False
        self._stop_tokens = self._find_stop_tokens()
        self._fragments = FragmentTokens(self._tokenize_whole, self._turn_markers())
        self._grammars: TokenGrammars | None = None  # llguidance's view of the vocabulary (prepare_constraints)
        self._state_buffer = llamacpp_state.StateBuffer()  # states on their way to the disk

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        entry: ModelEntry,
        context_length: int = 0,
        n_threads: int | None = None,
        cache_bytes_limit: int = DEFAULT_CACHE_BYTES,
        device: str | None = None,
    ) -> LlamaCppBackend:
        """Load ``entry`` on ``device`` (the factory passes :func:`devices.llamacpp_device`'s answer; None:
        ask it here), every layer on the GPU when that is one."""
        if entry.format == "mlx":
            raise ModelLoadError(f"{entry.name} is an MLX-format model; llama.cpp runs GGUF files only. "
                                 "Serve it with `--engine mlx` (or pull the GGUF version of the model)")
        if entry.format != "gguf":
            raise ModelLoadError(f"{entry.name} has format {entry.format!r}; llama.cpp runs GGUF files only")
        if not entry.weights.is_file():
            raise ModelLoadError(f"{entry.name}: weights file {entry.path} is missing; re-install the model")
        try:
            import llama_cpp
        except ImportError as exc:
            raise ModelLoadError(f"llama-cpp-python is not importable ({exc}); pip install llama-cpp-python") from None
        device = devices.llamacpp_device() if device is None else device
        requested = gpu_layers_to_request(device)
        try:
            with llamacpp_log.python_log_while_loading(llama_cpp):
                llama = llama_cpp.Llama(
                    model_path=str(entry.weights),
                    n_ctx=max(context_length, 0),  # 0: the model's trained context
                    n_batch=N_BATCH,
                    n_ubatch=N_BATCH,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    n_gpu_layers=requested,
                    verbose=False,  # also sets llama.cpp's own log level to errors only
                )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {entry.name} from {entry.path}: {exc}") from None
        metadata = llama.metadata
        template = metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        if "tokenizer.chat_template" not in metadata:
            log.warning("%s has no chat template in its GGUF metadata; using ChatML", entry.name)
        model = llama._model
        bos, eos = llama.token_bos(), llama.token_eos()
        info = ModelInfo(
            name=entry.name,
            context_length=llama.n_ctx(),
            chat_template=template,
            bos_token=model.token_get_text(bos) if bos >= 0 else "",
            eos_token=model.token_get_text(eos) if eos >= 0 else "",
        )
        offloaded, total = offloaded_layers(llama, requested)
        backend = cls(llama, info, device if offloaded > 0 and device else "cpu", cache_bytes_limit)
        backend.gpu_layers = {"requested": requested, "offloaded": offloaded, "total": total}
        return backend

    def _find_stop_tokens(self) -> frozenset[int]:
        """EOS plus every end-of-generation token: llama.cpp's EOG flag and known end-of-turn texts."""
        lib, vocab, llama = self._lib, self._vocab, self._llama
        stops = {t for t in (llama.token_eos(), llama._model.token_eot()) if t >= 0}
        stops.update(t for t in range(llama.n_vocab()) if lib.llama_vocab_is_eog(vocab, t))
        for text in END_OF_TURN_TEXTS:
            tokens = llama.tokenize(text.encode(), add_bos=False, special=True)
            if len(tokens) == 1 and lib.llama_vocab_is_control(vocab, tokens[0]):
                stops.add(tokens[0])
        return frozenset(stops)

    # -- tokens ------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text``, piece by piece between turn markers, each piece remembered
        (token_fragments.py: a new Claude Code turn tokenizes only its new messages)."""
        return list(self._fragments.tokenize(text))

    def _tokenize_whole(self, text: str) -> list[int]:
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _turn_markers(self) -> dict[str, int]:
        """Where texts are split: the vocabulary's control tokens that keep the whitespace around them,
        once checked to give the whole text's tokens on conversations written with them (else none)."""
        lib, vocab = self._lib, self._vocab
        strips = lib.LLAMA_TOKEN_ATTR_LSTRIP | lib.LLAMA_TOKEN_ATTR_RSTRIP
        wanted = lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_USER_DEFINED
        markers: dict[str, int] = {}
        for token in range(self._llama.n_vocab()):
            attr = lib.llama_vocab_get_attr(vocab, token)
            if attr & wanted and not attr & strips:
                text = self._piece_bytes(token, special=True).decode("utf-8", errors="replace")
                if text and self._tokenize_whole(text) == [token]:
                    markers.setdefault(text, token)
        samples = [token_fragments.PROBE, "".join(f"\n{m}\n hi  {m}x {m}\n\n" for m in markers)]
        if markers and not token_fragments.splits_cleanly(self._tokenize_whole, markers, samples):
            log.info("tokenizing whole prompts: splitting at this model's markers changes its tokens")
            return {}
        return markers

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._piece_bytes(t, special=True) for t in tokens).decode("utf-8", errors="replace")

    def is_stop_token(self, token: int) -> bool:
        return token in self._stop_tokens

    def _piece_bytes(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def _piece(self, token: int) -> bytes:
        """The bytes ``token`` adds to the output (control tokens add none), cached."""
        piece = self._pieces[token] = self._piece_bytes(token, special=False)
        return piece

    # -- generation --------------------------------------------------------------------------------
    def stream(self, prompt: Sequence[int], params: SamplingParams, cancel: threading.Event
               ) -> Iterator[Step | PrefixMatch]:
        if self._closed:
            raise EngineError("the model was unloaded")
        self.check_prompt(prompt)
        n_ctx = self.info.context_length
        llama = self._llama
        tokens = np.asarray(prompt, dtype=np.intc)
        sampler = make_sampler(params)  # numpy on llama.cpp's logits: sampling.py says why
        try:
            cached = self._reuse_prefix(tokens)
            yield PrefixMatch(cached, min(self.restored_from_disk, cached))
            for start in range(cached, len(tokens), N_BATCH):
                if cancel.is_set():
                    return
                llama.eval(tokens[start : start + N_BATCH].tolist())
            self._note_bytes_per_token()
            self._reserve_state_room(len(tokens) + params.max_tokens, self._bytes_per_token)
            yield from self._decode(sampler, cached, cancel, n_ctx, self._constrained(params))
        except GeneratorExit:
            raise
        except Exception:
            self._reset_live()  # the KV cache may no longer match input_ids
            raise
        finally:
            self._offer_to_disk()

    def _decode(self, sampler: Sampler, cached: int, cancel: threading.Event, n_ctx: int,
                run: ConstrainedRun | None = None) -> Iterator[Step]:
        """The per-token loop: (mask,) sample, yield, then evaluate the token (the last one is never evaluated)."""
        llama, ctx = self._llama, self._llama.ctx
        pieces, piece_of = self._pieces, self._piece
        decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode  # never splits a character
        while not cancel.is_set():
            logits = self._logits(ctx, -1)
            if run is not None and run.active:
                run.mask_logits(logits)
            token = sampler.sample(logits)
            piece = pieces.get(token)
            if piece is None:
                piece = piece_of(token)
            if run is not None:
                run.accept(token, piece)
            yield Step(token, decode(piece), cached)
            cached = 0
            if llama.n_tokens + 1 >= n_ctx:
                return  # the context is full
            llama.eval((token,))

    # -- constrained decoding (engine/constraint.py) -------------------------------------------------
    def _constrained(self, params: SamplingParams) -> ConstrainedRun | None:
        if params.constraint is None:
            return None
        return self._token_grammars().start(params.constraint)

    def _token_grammars(self) -> TokenGrammars:
        if self._grammars is None:
            self._grammars = TokenGrammars(self._ll_tokenizer, self._llama.n_vocab())
        return self._grammars

    def prepare_constraints(self) -> None:
        self._token_grammars().build_in_background()

    def _ll_tokenizer(self) -> Any:
        import warnings

        from llguidance.llamacpp import lltokenizer_from_vocab

        with warnings.catch_warnings():  # it reads every token's attributes through a deprecated alias
            warnings.simplefilter("ignore", DeprecationWarning)
            return lltokenizer_from_vocab(self._vocab, eos_token=sorted(self._stop_tokens))

    def _logits(self, ctx: Any, row: int) -> np.ndarray:
        """The logits llama.cpp will sample ``row`` from, as a writable view (masked in place)."""
        pointer = self._lib.llama_get_logits_ith(ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(self._llama.n_vocab(),))

    # -- prefix cache ------------------------------------------------------------------------------
    def _reuse_prefix(self, prompt: np.ndarray) -> int:
        """Bring the KV cache to the longest available prefix of ``prompt``; return its length.

        At least one prompt token is always left to evaluate, since sampling needs fresh logits.
        """
        llama = self._llama
        live = llama.input_ids[: llama.n_tokens]
        shared = common_prefix(live, prompt)
        if worth_saving(len(live), shared):
            self._save_live()
        # Only now: saving can evict or supersede saved states, which moves their indices.
        better = self._states.better_than(prompt, shared)
        if better is not None:
            saved, shared = better
            self._restore(saved.tokens, saved.payload)
        shared, restored = self._sequence_from_disk(prompt, shared, llama.ctx, 0)
        if restored is not None:
            llama.input_ids[: len(restored)] = restored
            llama.n_tokens = len(restored)
        keep = prompt_keep(shared, len(prompt))
        self._lib.llama_memory_seq_rm(self._memory(), 0, keep, -1)
        llama.n_tokens = keep
        return keep

    def _memory(self) -> Any:
        return self._lib.llama_get_memory(self._llama.ctx)

    def _save_live(self) -> None:
        llama = self._llama
        tokens = llama.input_ids[: llama.n_tokens].copy()
        if not len(tokens) or self._states.covers(tokens):
            return
        data = llamacpp_state.copy_state(self._lib, llama.ctx, 0, self._states.limit_bytes)
        if data:
            self._states.add(tokens, data, len(data))

    # -- prefix states on disk -----------------------------------------------------------------------
    def disk_identity(self, weights: Path) -> dict[str, Any]:
        from pensieve_server.engine.disk_states import file_identity

        params = self._llama.context_params
        kv = {name: int(getattr(params, name)) for name in ("type_k", "type_v", "flash_attn_type", "swa_full")
              if hasattr(params, name)}
        return {"engine": "llamacpp", "version": getattr(self._lib, "__version__", "?"),
                "model": file_identity(weights), "n_ctx": self.info.context_length, "kv": kv,
                "layout": type(self).__name__}

    def _sequence_from_disk(self, prompt: Sequence[int] | np.ndarray, shared: int, ctx: Any, seq_id: int
                            ) -> tuple[int, np.ndarray | None]:
        """Load the disk state sharing most of ``prompt`` into sequence ``seq_id`` when it beats ``shared``.

        Returns the prompt tokens now cached and the tokens the sequence now holds: None when it was not
        touched; empty when llama.cpp refused the state (the sequence is then empty: prefill from the start).
        """
        candidate = self.disk_candidate(prompt, shared)
        if candidate is None:
            return shared, None
        entry, disk_shared, payload = candidate
        if not llamacpp_state.set_state(self._lib, ctx, seq_id, payload):
            self._lib.llama_memory_seq_rm(self._lib.llama_get_memory(ctx), seq_id, -1, -1)
            if self.disk is not None:
                self.disk.reject(entry, "llama.cpp did not accept its state")
            return 0, entry.tokens[:0]
        self.restored_from_disk = disk_shared
        log.info("restored a prefix state of %d tokens from disk", disk_shared)
        return disk_shared, entry.tokens

    def _offer_to_disk(self) -> None:
        """Hand the live sequence to the disk store when it is long and new enough (written in the background)."""
        disk, llama = self.disk, self._llama
        if disk is None or self._closed or not disk.wants(llama.input_ids[: llama.n_tokens]):
            return
        self._lend_to_disk(llama.input_ids[: llama.n_tokens].copy(), llama.ctx, 0)

    def _reserve_state_room(self, tokens: int, bytes_per_token: int) -> None:
        """Prepare the buffer for a disk-bound state of ``tokens`` ahead of the copy (llamacpp_state.py)."""
        disk = self.disk
        if disk is not None and disk.saving and bytes_per_token and tokens >= disk.min_tokens:
            self._state_buffer.reserve(min(tokens, self.info.context_length) * bytes_per_token)

    def _lend_to_disk(self, tokens: Sequence[int] | np.ndarray, ctx: Any, seq_id: int) -> bool:
        """Copy sequence ``seq_id``'s state into the kept buffer and hand it to the disk writer; False
        when the buffer is still lent to the previous write (nothing copied)."""
        if self.disk is None:
            return True
        if self._state_buffer.busy:
            return False
        lent = self._state_buffer.lend(self._lib, ctx, seq_id)
        if lent is not None:
            view, give_back = lent
            self.disk.save(tokens, lambda: view, done=give_back)
        return True

    def _restore(self, tokens: np.ndarray, data: bytes) -> None:
        llama = self._llama
        if not llamacpp_state.set_state(self._lib, llama.ctx, 0, data):
            self._reset_live()
            raise EngineError("llama.cpp could not restore a saved prompt cache state")
        llama.input_ids[: len(tokens)] = tokens
        llama.n_tokens = len(tokens)

    def _reset_live(self) -> None:
        try:
            self._lib.llama_memory_seq_rm(self._memory(), 0, -1, -1)
        finally:
            self._llama.n_tokens = 0

    def _note_bytes_per_token(self) -> None:
        """Measure KV bytes per token once, so cache_bytes() never has to touch the context."""
        if not self._bytes_per_token and self._llama.n_tokens >= 16:
            self._bytes_per_token = self._lib.llama_state_seq_get_size(self._llama.ctx, 0) // self._llama.n_tokens

    def cache_bytes(self) -> int:
        live = self._llama.n_tokens * self._bytes_per_token if not self._closed else 0
        return self._states.bytes + live

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._grammars is not None:
                self._grammars.wait_for_build()  # it reads the vocabulary freed below
            if self.disk is not None:
                self.disk.close()
            self._states.clear()
            self._pieces.clear()
            self._llama.close()
