"""llama.cpp backend: many sequences decoded together, with continuous batching.

Each of ``slots`` sequences runs one sample; a step decodes one token of every busy slot in a
single batch. A problem's prompt is decoded once into a holder sequence and copied to every
sample's sequence (``llama_memory_seq_cp``); when a sample ends, the next
pending sample starts in its slot at once (``continuous=True``), instead of the batch waiting
for its longest sequence. Needs ``llama-cpp-python`` (compiled from source on install). Its
AMX code paths die with SIGILL on some CPUs, so models load with ``use_extra_bufts = False``.
"""

from __future__ import annotations

import ctypes
from collections import deque
from pathlib import Path
from typing import Iterator

from .driver import Completion, SamplingSettings

__all__ = ["LlamaCppBackend", "render_chat"]

_CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def render_chat(template: str | None, messages: list[dict]) -> str:
    """Render chat messages with a model's Jinja chat template (ChatML when it has none)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise ValueError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template or _CHATML).render(messages=messages,
                                                       add_generation_prompt=True, tools=None)


_SILENCE = None


def _silence_llama(lc) -> None:
    """Route llama.cpp's own logging to nowhere (it prints per context and per graph)."""
    global _SILENCE
    if _SILENCE is None:
        _SILENCE = lc.llama_log_callback(lambda level, text, user_data: None)
        lc.llama_log_set(_SILENCE, ctypes.c_void_p())


class _Slot:
    __slots__ = ("problem", "sample", "sampler", "pos", "next_token", "pieces", "n_gen")

    def __init__(self):
        self.problem = -1


class LlamaCppBackend:
    """Sample GGUF models on the CPU with llama.cpp, ``slots`` sequences at a time."""

    name = "llamacpp"

    def __init__(self, model: str | Path, *, slots: int = 32, threads: int = 2,
                 continuous: bool = True, kv_unified: bool = False,
                 model_id: str | None = None, verbose: bool = False):
        import llama_cpp as lc

        self.lc = lc
        if not verbose:
            _silence_llama(lc)
        self.path = Path(model)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF model at {self.path}")
        self.slots, self.threads, self.continuous = int(slots), int(threads), continuous
        self.kv_unified = kv_unified
        self.model_id = model_id or self.path.name
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.use_extra_bufts = False  # AMX repacking dies with SIGILL on these CPUs
        self.model = lc.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {self.path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        tmpl = lc.llama_model_chat_template(self.model, None)
        self.template = tmpl.decode() if tmpl else None
        self.ctx = None
        self._n_ctx = 0
        self.generated_tokens = 0  # over all samples, finished or not (for progress)

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            if self.ctx:
                self.lc.llama_free(self.ctx)
            if self.model:
                self.lc.llama_model_free(self.model)
        except Exception:
            pass

    # -- helpers -----------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        buf = (self.lc.llama_token * (len(data) + 16))()
        n = self.lc.llama_tokenize(self.vocab, data, len(data), buf, len(buf), True, True)
        if n < 0:
            raise RuntimeError("tokenization failed")
        return list(buf[:n])

    def _piece(self, tok: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.lc.llama_token_to_piece(self.vocab, tok, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lc.llama_token_to_piece(self.vocab, tok, buf, -n, 0, False)
        return buf.raw[:n]

    def _ensure_context(self, n_ctx: int) -> None:
        lc = self.lc
        if self.ctx is not None and self._n_ctx >= n_ctx:
            return
        if self.ctx is not None:
            lc.llama_free(self.ctx)
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = max(512, self.slots)
        cp.n_ubatch = max(512, self.slots)
        cp.n_seq_max = self.slots + 1
        cp.n_threads = self.threads
        cp.n_threads_batch = self.threads
        # Unified: one KV buffer, the prompt's cells shared by its samples, but every token
        # attends over all cells of all sequences. Split (default): a stream per sequence, the
        # prompt copied into each; far cheaper when prompts are short next to the answers.
        cp.kv_unified = self.kv_unified
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self._n_ctx = n_ctx
        self.mem = lc.llama_get_memory(self.ctx)

    def _decode(self, batch, n: int) -> None:
        batch.n_tokens = n
        rc = self.lc.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (context too small?)")

    def _sampler(self, settings: SamplingSettings, seed: int):
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        # temperature first, then nucleus: the order of transformers and vLLM
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(settings.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(settings.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    # -- generation ----------------------------------------------------------------------
    def generate(self, prompts: list[list[dict]], settings: SamplingSettings,
                 seeds: list[list[int]]) -> Iterator[list[Completion]]:
        lc = self.lc
        toks = [self.tokenize(render_chat(self.template, m)) for m in prompts]
        if not toks:
            return
        longest = max(len(t) for t in toks)
        if self.kv_unified:
            self._ensure_context(self.slots * (settings.max_new_tokens + 8) + 4 * longest + 256)
        else:  # each of the slots + 1 streams gets n_ctx / n_seq_max cells
            self._ensure_context((self.slots + 1) * (settings.max_new_tokens + longest + 16))
        lc.llama_memory_clear(self.mem, True)
        holder = self.slots
        n_batch = max(512, self.slots)
        batch = lc.llama_batch_init(n_batch, 0, 1)
        try:
            yield from self._run(toks, settings, seeds, batch, n_batch, holder)
        finally:
            lc.llama_batch_free(batch)

    def _run(self, toks, settings, seeds, batch, n_batch, holder):
        lc = self.lc
        pending = deque((i, j) for i in range(len(toks)) for j in range(settings.n))
        done: dict[int, list[Completion]] = {}
        slots = [_Slot() for _ in range(self.slots)]
        held = -1  # the problem whose prompt is in the holder sequence

        def put(k, tok, pos, seq, logits):
            batch.token[k] = tok
            batch.pos[k] = pos
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = seq
            batch.logits[k] = logits

        def start(slot_id: int, i: int, j: int):
            nonlocal held
            prompt = toks[i]
            if held != i:
                lc.llama_memory_seq_rm(self.mem, holder, -1, -1)
                body = prompt[:-1]
                for a in range(0, len(body), n_batch):
                    chunk = body[a:a + n_batch]
                    for b, t in enumerate(chunk):
                        put(b, t, a + b, holder, 0)
                    self._decode(batch, len(chunk))
                held = i
            lc.llama_memory_seq_cp(self.mem, holder, slot_id, -1, -1)
            s = slots[slot_id]
            s.problem, s.sample = i, j
            s.sampler = self._sampler(settings, seeds[i][j])
            s.pos, s.next_token = len(prompt) - 1, prompt[-1]
            s.pieces, s.n_gen = [], 0

        def finish(slot_id: int, finished: bool):
            s = slots[slot_id]
            text = b"".join(s.pieces).decode("utf-8", errors="replace")
            done.setdefault(s.problem, []).append(
                Completion(s.problem, s.sample, text, s.n_gen, finished))
            lc.llama_sampler_free(s.sampler)
            lc.llama_memory_seq_rm(self.mem, slot_id, -1, -1)
            s.problem = -1

        while pending or any(s.problem >= 0 for s in slots):
            idle = [k for k, s in enumerate(slots) if s.problem < 0]
            if pending and idle and (self.continuous or len(idle) == self.slots):
                for k in idle:
                    if not pending:
                        break
                    i, j = pending.popleft()
                    start(k, i, j)
                    if not pending or pending[0][0] != i:  # pending is in problem order
                        lc.llama_memory_seq_rm(self.mem, holder, -1, -1)  # all samples begun
                        held = -1
            busy = [k for k, s in enumerate(slots) if s.problem >= 0]
            for b, k in enumerate(busy):
                s = slots[k]
                put(b, s.next_token, s.pos, k, 1)
            self._decode(batch, len(busy))
            for b, k in enumerate(busy):
                s = slots[k]
                tok = lc.llama_sampler_sample(s.sampler, self.ctx, b)
                if lc.llama_vocab_is_eog(self.vocab, tok):
                    i = s.problem
                    finish(k, True)
                    if len(done[i]) == settings.n:
                        yield done.pop(i)
                    continue
                s.pieces.append(self._piece(tok))
                s.n_gen += 1
                self.generated_tokens += 1
                s.pos += 1
                s.next_token = tok
                if s.n_gen >= settings.max_new_tokens:
                    i = s.problem
                    finish(k, False)
                    if len(done[i]) == settings.n:
                        yield done.pop(i)
