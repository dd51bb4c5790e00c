"""The transformers engine: ``model.generate`` batched with left padding, on CPU or GPU.

Sampling is done per row by a logits processor with its own ``torch.Generator`` (on the CPU) seeded
with the sample's seed, and ``generate`` then runs greedy on the processed scores. So every sample
depends only on its own seed, never on which other rows share its batch, requests with different
temperatures share batches, and re-running with the same seed reproduces the samples. Greedy rows are
left untouched (plain argmax), which is what makes them token-identical to vLLM in fp32.

Stops (EOS, stop strings, per-row token limits) are tracked per row by one stopping criterion, which
records where each row ended.
"""

from __future__ import annotations

import time
from typing import Any, get_args

from codeplan_tools.core.errors import MissingDependency, UsageError
from codeplan_tools.engines import register
from codeplan_tools.engines.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    LocalEngine,
    Request,
    sample_seed,
    truncate_at_stop,
)
from codeplan_tools.engines.spec import Dtype


def _require_core(module: str):
    """torch and transformers are core dependencies (no extra): say so when one is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"the hf engine needs {module} ({exc}); reinstall codeplan: pip install codeplan"
        ) from exc


def _torch_dtype(torch, dtype: Dtype, device: str):
    if dtype == "auto":
        # fp32 on CPU: exact and, for small models, not slower; bf16 on GPU.
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in get_args(Dtype):
        raise UsageError(f"unknown dtype {dtype!r}; choose one of: {', '.join(get_args(Dtype))}")
    return getattr(torch, dtype)


@register("hf")
class HFEngine(LocalEngine):
    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        dtype: Dtype = "auto",
        device: str | None = None,
        batch_size: int = 32,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        tokenizer: str | None = None,
        **_ignored: Any,
    ):
        torch, transformers = _require_core("torch"), _require_core("transformers")
        self._torch = torch
        self.model_path = str(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = _torch_dtype(torch, dtype, self.device)
        self.batch_size = max(1, int(batch_size))
        tok = transformers.AutoTokenizer.from_pretrained(
            tokenizer or self.model_path, trust_remote_code=trust_remote_code
        )
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=self.dtype, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self.context = int(
            max_model_len or getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30
        )
        self.use_tokenizer(tok, getattr(self.model.generation_config, "eos_token_id", None))
        pad = tok.pad_token_id
        if pad is None:
            pad = tok.eos_token_id if tok.eos_token_id is not None else 0
        self._pad = int(pad)

    def describe(self) -> dict:
        import transformers

        return {
            "engine": self.name,
            "model": self.model_path,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
            "transformers": transformers.__version__,
        }

    # -- generation ------------------------------------------------------------------------------
    def sample(self, prompts: list[tuple[Request, list[int]]]) -> list[list[Completion]]:
        rows: list[_Row] = []
        for pi, (req, ids) in enumerate(prompts):
            stops, tstops = self._stop_rules(req)
            limit = self.max_new_tokens(req, ids)
            for j in range(1 if req.greedy else req.n):
                rows.append(_Row(pi, j, ids, req, sample_seed(req.seed, j), limit, stops, tstops))
        rows.sort(key=lambda r: len(r.ids))  # batches of similar lengths pad less
        for start in range(0, len(rows), self.batch_size):
            self._run_batch(rows[start : start + self.batch_size])
        done: list[list[Completion]] = [[] for _ in prompts]
        for row in sorted(rows, key=lambda r: (r.request_index, r.sample)):
            if row.completion is not None:
                done[row.request_index].append(row.completion)
        return done

    def _run_batch(self, batch: list[_Row]) -> None:
        torch = self._torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(r.ids) for r in batch)
        input_ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding
            input_ids[i, width - len(r.ids) :] = torch.tensor(r.ids, dtype=torch.long)
            attention[i, width - len(r.ids) :] = 1
        max_new = max(r.limit for r in batch)
        stopper = _RowStopper(batch, width, self.tokenizer)
        processors = LogitsProcessorList()
        if any(not r.request.greedy for r in batch):
            processors.append(_RowSampler(batch, torch))
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=False,
            num_beams=1,
            pad_token_id=self._pad,
            # Neutral values, so that the model's generation_config (which fills every unset field)
            # cannot add penalties the other engines do not apply.
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            min_new_tokens=0,
        )
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stopper]),
            )
        self.last_batch_seconds = time.perf_counter() - t0
        generated = out[:, width:].tolist()
        for i, r in enumerate(batch):
            end = stopper.ended_at[i] if stopper.ended_at[i] is not None else len(generated[i])
            toks = generated[i][: min(end, r.limit)]
            r.completion = self._finish(r, toks, stopper.reason[i])

    def _finish(self, r: _Row, toks: list[int], reason: str | None) -> Completion:
        """Text and finish reason of one row from its generated tokens (stop token included)."""
        body = toks[:-1] if toks and toks[-1] in r.stop_ids else toks
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        text, found = truncate_at_stop(text, r.text_stops)
        if toks and toks[-1] in r.stop_ids:
            reason = FINISH_STOP
        elif found:
            reason = FINISH_STOP
            if r.text_stops:  # the stop string was seen only in the full text: count tokens up to it
                for k in range(1, len(toks) + 1):
                    if truncate_at_stop(
                        self.tokenizer.decode(toks[:k], skip_special_tokens=True), r.text_stops
                    )[1]:
                        toks = toks[:k]
                        break
        else:
            reason = FINISH_LENGTH
        return Completion(text=text, finish_reason=reason, tokens_out=len(toks), seed=r.seed, token_ids=toks)


class _Row:
    """One sample to generate: a prompt, its sampling settings and, after the batch, its completion."""

    __slots__ = (
        "request_index",
        "sample",
        "ids",
        "request",
        "seed",
        "limit",
        "stop_ids",
        "text_stops",
        "completion",
    )

    def __init__(self, request_index, sample, ids, request, seed, limit, stop_ids, text_stops):
        self.request_index, self.sample, self.ids, self.request = request_index, sample, ids, request
        self.seed, self.limit, self.stop_ids, self.text_stops = seed, limit, stop_ids, text_stops
        self.completion: Completion | None = None


class _RowSampler:
    """Logits processor: rows with temperature > 0 get one token drawn from their own generator.

    The drawn token keeps its score and every other token gets -inf, so the greedy step of
    ``generate`` picks it. Temperature and top-p (nucleus) are applied per row.
    """

    def __init__(self, batch: list[_Row], torch):
        self.torch = torch
        self.rows = [i for i, r in enumerate(batch) if not r.request.greedy]
        self.temps = torch.tensor([batch[i].request.temperature for i in self.rows], dtype=torch.float32)
        self.top_ps = torch.tensor([batch[i].request.top_p for i in self.rows], dtype=torch.float32)
        self.gens = [torch.Generator(device="cpu").manual_seed(batch[i].seed) for i in self.rows]
        self.nucleus = bool((self.top_ps < 1.0).any())
        self.idx = None

    def __call__(self, input_ids, scores):
        torch = self.torch
        device = scores.device
        if self.idx is None or self.idx.device != device:
            self.idx = torch.tensor(self.rows, device=device)
            self.temps, self.top_ps = self.temps.to(device), self.top_ps.to(device)
        probs = torch.softmax(scores[self.idx].float() / self.temps[:, None], dim=-1)
        if self.nucleus:
            probs, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = (probs.cumsum(-1) - probs) >= self.top_ps[:, None]
            probs = probs.masked_fill(drop, 0.0)
        cdf = probs.cumsum(-1)
        # Only the uniform draws come from the per-row (CPU) generators; the rest stays on the device.
        u = torch.stack([torch.rand((), generator=g) for g in self.gens]).to(device) * cdf[:, -1]
        # right=True: the first token whose cdf exceeds u, never one of probability 0.
        pick = torch.searchsorted(cdf, u[:, None].contiguous(), right=True).clamp(max=cdf.shape[1] - 1)
        tokens = order.gather(1, pick) if self.nucleus else pick
        idx = self.idx
        out = scores.clone()
        out[idx] = float("-inf")
        out[idx[:, None], tokens] = 0.0
        return out


class _RowStopper:
    """Stopping criterion: per row, EOS / stop ids, stop strings and the row's own token limit.

    Stop ids and limits are checked on tensors; a row's text is decoded (its last few tokens) only
    when the new token could end one of its stop strings, so most steps cost no Python per row.
    """

    def __init__(self, batch: list[_Row], width: int, tokenizer):
        import torch

        self.batch, self.width, self.tokenizer = batch, width, tokenizer
        self.ended_at: list[int | None] = [None] * len(batch)
        self.reason: list[str | None] = [None] * len(batch)
        k = max(1, max(len(r.stop_ids) for r in batch))
        stop = torch.full((len(batch), k), -1, dtype=torch.long)
        for i, r in enumerate(batch):
            if r.stop_ids:
                stop[i, : len(r.stop_ids)] = torch.tensor(sorted(r.stop_ids), dtype=torch.long)
        self.stop = stop
        self.limits = torch.tensor([r.limit for r in batch], dtype=torch.long)
        self.done = torch.zeros(len(batch), dtype=torch.bool)
        self.text_rows = [i for i, r in enumerate(batch) if r.text_stops]
        self.tails = [max((len(s) for s in r.text_stops), default=0) + 4 for r in batch]
        self.last_chars = [{s[-1] for s in r.text_stops} | {"\ufffd"} for r in batch]
        self._piece: dict[int, str] = {}

    def _could_end_stop(self, i: int, token: int) -> bool:
        piece = self._piece.get(token)
        if piece is None:
            piece = self._piece[token] = self.tokenizer.decode([token])
        return any(ch in piece for ch in self.last_chars[i])

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        n_new = input_ids.shape[1] - self.width
        last = input_ids[:, -1].cpu()
        by_id = (last[:, None] == self.stop).any(dim=1) & ~self.done
        by_text = torch.zeros_like(by_id)
        if self.text_rows:
            last_list = last.tolist()
            settled = (self.done | by_id).tolist()  # lists: indexing a tensor per row costs microseconds
            for i in self.text_rows:
                if settled[i] or not self._could_end_stop(i, last_list[i]):
                    continue
                start = max(self.width, input_ids.shape[1] - self.tails[i])
                tail = self.tokenizer.decode(input_ids[i, start:])
                if truncate_at_stop(tail, self.batch[i].text_stops)[1]:
                    by_text[i] = True
        by_len = (n_new >= self.limits) & ~self.done & ~by_id & ~by_text
        new = by_id | by_text | by_len
        if new.any():
            for i in new.nonzero().flatten().tolist():
                self.ended_at[i] = n_new
                self.reason[i] = FINISH_LENGTH if by_len[i] else FINISH_STOP
            self.done |= new
        return self.done.to(input_ids.device)
