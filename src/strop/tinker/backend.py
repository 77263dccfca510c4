"""What the Tinker primitives do to a model: LoRA training clients and samplers over one base model.

Each base model is loaded once and wrapped in peft; every training client is one LoRA adapter on it
and every sampler a frozen copy of an adapter's weights (a snapshot), so a sampler sees the weights
saved when it was created, whatever training does next. All work on a base runs on one thread, in
the order it arrived: a client's requests keep their order, and switching adapters never races.

A snapshot is a file, not a live adapter: an RL loop makes a sampler every step, and one peft adapter
per step would grow memory without end (about 20 MB each at rank 32 on the default model). Sampling
loads a snapshot into one shared adapter per LoRA rank (a copy of a few MB), keeping the
``CACHED_SNAPSHOTS`` most recently used states in memory.

Losses follow Tinker's definitions, summed over tokens and datums (position i of the input predicts
``target_tokens[i]``; ``lp`` is the model's log-probability of that target):

- ``cross_entropy``: ``-sum(lp * weights)``;
- ``importance_sampling``: ``-sum(exp(lp - logprobs) * advantages)``, ``logprobs`` from the sampler;
- ``ppo``: ``-sum(min(r * A, clip(r, lo, hi) * A))``, ``r = exp(lp - logprobs)``, ``lo``/``hi`` from
  ``clip_low_threshold``/``clip_high_threshold`` (0.8, 1.2);
- ``cispo``: ``-sum(sg(clip(r, lo, hi)) * lp * A)``: the clipped ratio is a constant weight on the
  log-probability, so no token's gradient is zeroed; ``lo``/``hi`` default to 0 and 4 (one-sided);
- ``dro``: ``-sum(lp * A - beta / 2 * (lp - logprobs) ** 2)``; ``beta`` from ``loss_fn_config``, which
  this server requires (Tinker documents no default);
- ``gspo`` (the token variant): ppo's objective with every token's ratio replaced by the sequence's,
  ``exp(mean(lp - logprobs))`` over ``sequence_ratio_mask`` (by default the tokens with a non-zero
  advantage, which leaves out the prompt), carrying its own token's gradient; ppo's thresholds.

A threshold (``clip_low_threshold``, ``clip_high_threshold``, ``beta``) may also come per token in
``loss_fn_inputs``, which the SDK's ``Datum`` allows; otherwise ``loss_fn_config`` gives one value.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import StropError
from ..models.cache import cache_kw, returned_cache

LOSSES = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo")
CACHED_SNAPSHOTS = 8
BATCH_TOKENS = 4096  # padded tokens per forward pass: the logits are BATCH_TOKENS x vocabulary floats


class UserError(Exception):
    """A request the client got wrong: the future fails with category ``user``."""


@dataclass
class Datum:
    tokens: list[int]
    inputs: dict  # name -> numpy array


@dataclass
class Client:
    """One training client: a LoRA adapter on its base, with its optimizer."""
    model_id: str
    adapter: str
    base_model: str
    rank: int
    optimizer: object = None


class Base:
    """One base model with its adapters; every call is made on this object's single worker thread."""

    def __init__(self, name: str) -> None:
        import torch

        from .. import models

        self.name = name
        self.path = models.resolve(name)
        check_memory(name, self.path)
        self.model = models.load_model(name, "float32")
        self.tok = models.load_tokenizer(name)
        self.model.requires_grad_(False)
        self.peft = None  # the PeftModel, once the first adapter exists
        self.device = torch.device("cpu")
        self.snapshot_files: dict[str, tuple[int, Path]] = {}  # snapshot key -> (LoRA rank, safetensors file)
        self.snapshot_cache: OrderedDict[str, dict] = OrderedDict()  # the most recently used states
        self.slots: dict[int, str] = {}  # LoRA rank -> the adapter samplers of that rank run in
        self.slot_holds: dict[int, str] = {}  # LoRA rank -> the snapshot now loaded in that slot

    # -- adapters -------------------------------------------------------------------------------
    def add_adapter(self, name: str, rank: int, seed: int | None = None, trainable: bool = True) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        if seed is not None:
            torch.manual_seed(seed)
        if self.peft is None:
            self.peft = get_peft_model(self.model, config, adapter_name=name)
        else:
            self.peft.add_adapter(name, config)
        for n, p in self.peft.named_parameters():
            if f".{name}." in n:
                p.requires_grad_(trainable)

    def use(self, name: str | None):
        """The model with adapter ``name`` active (None: the base alone)."""
        import contextlib

        if name is None:
            return self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()
        self.peft.base_model.set_adapter(name)
        return contextlib.nullcontext()

    def adapter_state(self, name: str) -> dict:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.peft, adapter_name=name).items()}

    def load_adapter_state(self, name: str, state: dict) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.peft, state, adapter_name=name)

    # -- snapshots for samplers ---------------------------------------------------------------------
    def snapshot(self, key: str, client: Client, file: Path) -> None:
        """Freeze ``client``'s weights as they are now under ``key``, written to ``file``."""
        from safetensors.torch import save_file

        state = self.adapter_state(client.adapter)
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(file))
        self.snapshot_files[key] = (client.rank, file)
        self._cache(key, state)

    def register_snapshot(self, key: str, rank: int, file: Path) -> None:
        """A snapshot saved earlier (or by a server before a restart), read when first sampled."""
        self.snapshot_files[key] = (rank, file)

    def sampling_adapter(self, key: str) -> str:
        """The adapter that holds snapshot ``key``, loading it into its rank's slot if another is there."""
        from safetensors.torch import load_file

        rank, file = self.snapshot_files[key]
        slot = self.slots.get(rank)
        if slot is None:
            slot = self.slots[rank] = f"sampling_r{rank}"
            self.add_adapter(slot, rank, trainable=False)
        if self.slot_holds.get(rank) != key:
            state = self.snapshot_cache.get(key)
            if state is None:
                if not file.is_file():
                    raise UserError(f"sampler weights {file.parent.name}/{file.name}: deleted from the server's workdir")
                state = load_file(str(file))
            self.load_adapter_state(slot, state)
            self.slot_holds[rank] = key
            self._cache(key, state)
        self.snapshot_cache.move_to_end(key)
        return slot

    def _cache(self, key: str, state: dict) -> None:
        self.snapshot_cache[key] = state
        while len(self.snapshot_cache) > CACHED_SNAPSHOTS:
            self.snapshot_cache.popitem(last=False)

    def trainable(self, name: str) -> list:
        return [p for n, p in self.peft.named_parameters() if f".{name}." in n]

    # -- the primitives ---------------------------------------------------------------------------
    def logprobs(self, adapter: str | None, batch: list[Datum]) -> list:
        """Each datum's log-probability of its target tokens (shape (T,)) under ``adapter``; keeps the graph.

        The datums run in one forward pass, right-padded (one pass per datum would pay every
        layer's overhead again, which dominates on a CPU at these sizes); right padding leaves a
        causal model's real positions unchanged. ``forward_backward`` sizes the batches.
        """
        import torch

        for d in batch:
            if "target_tokens" not in d.inputs:
                raise UserError("loss_fn_inputs needs 'target_tokens'")
            n = torch.as_tensor(d.inputs["target_tokens"]).numel()
            if n != len(d.tokens):
                raise UserError(f"target_tokens: {n} values for a {len(d.tokens)}-token input "
                                "(position i predicts target i, so they must be the same length)")
        model = self.peft if self.peft is not None else self.model
        width = max(len(d.tokens) for d in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        targets = torch.zeros_like(ids)
        for i, d in enumerate(batch):
            ids[i, :len(d.tokens)] = torch.tensor(d.tokens)
            mask[i, :len(d.tokens)] = 1
            targets[i, :len(d.tokens)] = torch.as_tensor(d.inputs["target_tokens"]).long().reshape(-1)
        with self.use(adapter):
            logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
        lp = torch.log_softmax(logits, dim=-1).gather(2, targets[..., None])[..., 0]
        return [lp[i, :len(d.tokens)] for i, d in enumerate(batch)]

    def forward_backward(self, client: Client, data: list[Datum], loss_fn: str, config: dict, forward_only: bool):
        import torch

        if loss_fn not in LOSSES:
            raise UserError(f"loss_fn {loss_fn!r}: this server supports {', '.join(LOSSES)}")
        outputs, total = [], 0.0
        grad = torch.enable_grad() if not forward_only else torch.no_grad()
        with grad:
            for batch in _batches(data, BATCH_TOKENS):
                lps = self.logprobs(client.adapter, batch)
                loss = sum(_loss(loss_fn, lp, d.inputs, config) for lp, d in zip(lps, batch))
                if not forward_only:
                    loss.backward()
                total += float(loss.detach())
                outputs.extend(lp.detach().numpy().astype("float32") for lp in lps)
        return outputs, {"loss:sum": total}

    def optim_step(self, client: Client, adam: dict) -> dict:
        import torch

        params = self.trainable(client.adapter)
        if client.optimizer is None:
            client.optimizer = torch.optim.AdamW(params, lr=adam["learning_rate"])
        for group in client.optimizer.param_groups:
            group.update(lr=adam["learning_rate"], betas=(adam["beta1"], adam["beta2"]), eps=adam["eps"],
                         weight_decay=adam["weight_decay"])
        norm = torch.nn.utils.clip_grad_norm_(params, adam["grad_clip_norm"] if adam["grad_clip_norm"] > 0 else math.inf)
        client.optimizer.step()
        client.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm:mean": float(norm)}

    def sample(self, adapter: str | None, prompt: list[int], n: int, params: dict, want: Scores = None):
        """[Sample] for ``n`` samples, and the prompt's scores when ``want`` asks for them.

        Every sampled token's log-probability (and its top-k, when asked) is taken at temperature 1
        from the logits it was drawn from, as ``forward`` would compute it.
        """
        import torch

        want = want or Scores()
        model = self.peft if self.peft is not None else self.model
        stops = params.get("stop")
        stop_ids = [s for s in stops if isinstance(s, int)] if isinstance(stops, list) else []
        stop_texts = [stops] if isinstance(stops, str) else [s for s in (stops or []) if isinstance(s, str)]
        eos = None if stops == [] else self.tok.eos_token_id
        max_new = int(params.get("max_tokens") or 64)
        temperature = float(params.get("temperature", 1.0))
        gen = torch.Generator().manual_seed(int(params["seed"])) if params.get("seed") is not None else None
        top_k, top_p = int(params.get("top_k", -1)), float(params.get("top_p", 1.0))
        with torch.no_grad(), self.use(adapter):
            # the prompt once; its cache is copied for the n samples, which then decode as one batch
            scored = want.prompt or want.topk_prompt or want.targets is not None
            # logits_to_keep=1 unless the prompt is scored: (prompt x vocabulary) floats are large
            first = model(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=0 if scored else 1)
            past = returned_cache(first)
            past.batch_repeat_interleave(n)
            logits = first.logits[0, -1:].float().expand(n, -1)
            seqs = [Sample([], [], False, None) for _ in range(n)]
            tops: list[list] = [[] for _ in range(n)]
            live = list(range(n))
            for _step in range(max_new):
                scores = torch.log_softmax(logits, -1)
                step = []
                for i in range(n):
                    token = _pick(logits[i], temperature, top_k, top_p, gen) if i in live else 0
                    step.append(token)
                    if i not in live:
                        continue
                    seq = seqs[i]
                    seq.tokens.append(token)
                    seq.logprobs.append(float(scores[i, token]))
                    if want.topk_sample:
                        top = torch.topk(scores[i], min(want.topk_sample, scores.shape[1]))
                        tops[i].append((top.indices, top.values))
                    if token in stop_ids or (eos is not None and token == eos) or _ends_with(self.tok, seq.tokens, stop_texts):
                        seq.stopped = True
                if not (live := [i for i in live if not seqs[i].stopped]) or _step == max_new - 1:
                    break
                result = model(input_ids=torch.tensor(step)[:, None], use_cache=True, **cache_kw(model, past))
                past, logits = returned_cache(result), result.logits[:, -1].float()
            if want.topk_sample:
                for seq, rows in zip(seqs, tops):
                    seq.topk = _topk_rows(rows, want.topk_sample)
            out = seqs
            plp = tplp = targets = None
            if scored:
                scores = torch.log_softmax(first.logits[0, :-1].float(), -1)  # row i: prompt position i + 1
                if want.targets is not None:
                    bad = [t for _, t in want.targets if not 0 <= t < scores.shape[1]]
                    if bad:
                        raise UserError(f"target_prompt_logprobs: token id {bad[0]} is outside the vocabulary "
                                        f"(0..{scores.shape[1] - 1})")
                    targets = [float(scores[i, t]) for i, t in want.targets]
                first_scored = len(prompt) - want.last_n if want.last_n else 1  # the first prompt position scored
                if want.prompt:
                    lp = scores.gather(1, torch.tensor(prompt[1:])[:, None])[:, 0].tolist()
                    plp = [math.nan] * first_scored + lp[first_scored - 1:]
                if want.topk_prompt:
                    k = min(want.topk_prompt, scores.shape[1])
                    top = torch.topk(scores[first_scored - 1:], k)
                    tplp = _topk_rows([None] * first_scored + list(zip(top.indices, top.values)), k)
        return out, plp, tplp, targets

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, client: Client, directory: Path, with_optimizer: bool) -> None:
        from safetensors.torch import save_file

        from ..patches.checkpoints import save_state

        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state(client.adapter), str(directory / "adapter.safetensors"))
        (directory / "strop_tinker.json").write_text(json.dumps({"base_model": client.base_model, "rank": client.rank}))
        if with_optimizer and client.optimizer is not None:
            save_state(client.optimizer.state_dict(), directory, "optimizer")

    def restore(self, client: Client, directory: Path, with_optimizer: bool) -> None:
        from safetensors.torch import load_file

        from ..patches.checkpoints import load_state

        self.load_adapter_state(client.adapter, load_file(str(directory / "adapter.safetensors")))
        if with_optimizer and (directory / "optimizer.json").is_file():
            import torch

            client.optimizer = torch.optim.AdamW(self.trainable(client.adapter), lr=1e-4)
            client.optimizer.load_state_dict(load_state(directory, "optimizer"))


def checkpoint_info(directory: Path) -> dict:
    info = directory / "strop_tinker.json"
    if not info.is_file():
        raise UserError(f"{directory.name}: no saved weights there")
    return json.loads(info.read_text())


def _loss(loss_fn: str, lp, inputs: dict, config: dict):
    import torch

    def given(name: str):
        if name not in inputs:
            raise UserError(f"loss_fn {loss_fn}: loss_fn_inputs needs {name!r}")
        value = torch.as_tensor(inputs[name]).float().reshape(-1)
        if value.numel() != lp.numel():
            raise UserError(f"loss_fn_inputs[{name!r}]: {value.numel()} values for {lp.numel()} target tokens")
        return value

    if loss_fn == "cross_entropy":
        weights = given("weights") if "weights" in inputs else torch.ones_like(lp)
        return -(lp * weights).sum()
    sampled = given("logprobs")
    ratio = torch.exp(lp - sampled)
    advantages = given("advantages")
    if loss_fn == "importance_sampling":
        return -(ratio * advantages).sum()
    def number(key: str, default: float | None):
        """A loss parameter: per token from ``loss_fn_inputs`` (the SDK's Datum allows it), else one value."""
        if key in inputs:
            return given(key)
        if key not in config and default is None:
            raise UserError(f"loss_fn {loss_fn}: loss_fn_config needs {key!r} (this server has no default)")
        try:
            return lp.new_tensor(float(config.get(key, default)))
        except (TypeError, ValueError):
            raise UserError(f"loss_fn_config[{key!r}]: {config[key]!r} is not a number") from None

    if loss_fn == "dro":  # beta weighs the quadratic penalty; Tinker documents no default
        return -(lp * advantages - 0.5 * number("beta", None) * (lp - sampled) ** 2).sum()
    if loss_fn == "cispo":
        lo, hi = number("clip_low_threshold", 0.0), number("clip_high_threshold", 4.0)
        return -(torch.clamp(ratio, lo, hi).detach() * lp * advantages).sum()
    lo, hi = number("clip_low_threshold", 0.8), number("clip_high_threshold", 1.2)
    if loss_fn == "gspo":
        ratio = _sequence_ratio(lp, sampled, given("sequence_ratio_mask") != 0 if "sequence_ratio_mask" in inputs
                                else advantages != 0)
    return -torch.minimum(ratio * advantages, torch.clamp(ratio, lo, hi) * advantages).sum()


def _sequence_ratio(lp, sampled, mask):
    """GSPO-token's ratio: every token carries exp(mean log-ratio over ``mask``), with its own lp's gradient."""
    import torch

    log_ratio = (lp.detach() - sampled)[mask].mean() if bool(mask.any()) else lp.new_zeros(())
    return torch.exp(log_ratio + lp - lp.detach())


@dataclass
class Scores:
    """What a sample request asks for beside the sampled tokens (the SDK's ``SampleRequest`` fields)."""

    prompt: bool = False      # prompt_logprobs
    topk_prompt: int = 0      # topk_prompt_logprobs
    topk_sample: int = 0      # topk_sample_logprobs
    last_n: int | None = None  # prompt_logprobs_last_n: score only the prompt's last N tokens
    targets: list | None = None  # target_prompt_logprobs: (row, token id) cells, row i = prompt position i + 1


@dataclass
class Sample:
    tokens: list
    logprobs: list
    stopped: bool
    topk: tuple | None = None  # (token ids, logprobs), each (length, k), when asked


def _topk_rows(rows: list, k: int):
    """Dense (length, k) token-id and logprob matrices; a row that is None is the SDK's empty sentinel."""
    import numpy as np

    ids = np.zeros((len(rows), k), np.int32)
    lps = np.full((len(rows), k), -99999.0, np.float32)  # tinker.types.topk_logprobs.MASK_LOGPROB
    for i, row in enumerate(rows):
        if row is not None:
            ids[i], lps[i] = row[0].numpy(), row[1].numpy()
    return ids, lps


def _batches(data: list, budget: int):
    """Consecutive runs of ``data`` whose padded size (count x longest) stays within ``budget`` tokens."""
    batch, width = [], 0
    for d in data:
        w = max(width, len(d.tokens))
        if batch and w * (len(batch) + 1) > budget:
            yield batch
            batch, w = [], len(d.tokens)
        batch.append(d)
        width = w
    if batch:
        yield batch


def _pick(logits, temperature: float, top_k: int, top_p: float, gen) -> int:
    import torch

    if temperature <= 1e-5:
        return int(torch.argmax(logits))
    scores = logits / temperature
    if 0 < top_k < scores.numel():
        cut = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < cut, -math.inf)
    probs = torch.softmax(scores, -1)
    if top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, 0) - ordered < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=gen))


def _ends_with(tok, tokens: list[int], texts: list[str]) -> bool:
    if not texts:
        return False
    tail = tok.decode(tokens[-16:])
    return any(tail.endswith(t) for t in texts)


def check_base(name: str) -> None:
    """A one-line error for a base model this machine cannot load, before a client waits on it."""
    from .. import models

    path = models.resolve(name)
    if not isinstance(path, Path):
        raise StropError(f"base_model {name!r}: not a strop alias, model directory or .gguf file here")


def check_memory(name: str, path) -> None:
    """A one-line error when this machine's free memory cannot hold another float32 copy of ``name``."""
    import psutil

    if not isinstance(path, Path):
        return
    stored = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    if not stored:
        return
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    width = 2 if str(config.get("torch_dtype") or config.get("dtype") or "float32") in ("bfloat16", "float16") else 4
    need = stored * 4 / width * 1.2  # float32 weights, and room to run them
    free = psutil.virtual_memory().available
    if need > free:
        raise UserError(f"base_model {name}: needs about {need / 2**30:.1f} GiB in float32 and {free / 2**30:.1f} GiB "
                        "is free; finish other training clients (ServiceClient.close) or use a smaller model")
