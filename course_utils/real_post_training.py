"""A real model post-trained: SmolLM2-135M-Instruct with LoRA, SFT then GRPO, on the chapter's arithmetic.

Chapter 12 builds its pipeline on a model pretrained in the chapter (:mod:`course_utils.post_training`).
This module runs the same two stages that matter most, supervised fine-tuning and GRPO, on a
real instruction-tuned model, with the same tasks, the same held-out problems, the same losses
(:mod:`course_utils.post_training_losses`) and the same verifier (:mod:`course_utils.verifiable_tasks`):

* **the model**: SmolLM2-135M-Instruct loaded offline (:func:`course_utils.pretrained.load_smollm2`),
  a transformers ``LlamaForCausalLM`` with its own tokenizer; fp32 on a CPU, bf16 autocast on a
  GPU with bf16.
* **the prompt**: the chapter's chat *with* its system prompt (``to_chat(..., system=True)``),
  which tells the model the answer format. SmolLM2's own chat template adds a default system
  prompt ("You are a helpful AI assistant named SmolLM ...") only when a chat has none, so with
  a system message it renders exactly :func:`course_utils.chat.render_chat`'s text;
  :func:`check_prompt_layout` checks that, and :func:`course_utils.chat.tokenize_chat` then gives
  the assistant-only mask from character offsets with SmolLM2's tokenizer unchanged.
* **LoRA** (``peft``): rank-8 adapters (alpha 16, no dropout) on every linear projection of
  every block: ``q_proj, k_proj, v_proj, o_proj`` of attention and ``gate_proj, up_proj,
  down_proj`` of the MLP (:data:`LORA_TARGETS`). The 135M base weights stay frozen; about 2.4M
  adapter weights (1.8 %) train.
* **SFT** (:func:`train_lora_sft`): the course's :class:`course_utils.train.Trainer` with the
  assistant-only loss (:func:`course_utils.post_training.sft_batch_loss`).
* **GRPO** (:func:`train_lora_grpo`): groups of sampled answers per problem, rewards from the
  verifier (checked by :func:`course_utils.verifiable_tasks.check_rewards`), group-normalised
  advantages and the clipped objective, one optimizer step per generation (so the old policy's
  log-probabilities are the current ones, detached: ratio 1, TRL's default ``num_iterations=1``).
* **evaluation** (:func:`evaluate`): batched greedy decoding, prompts left-padded, stopping at
  ``<|im_end|>``, scored by :func:`course_utils.verifiable_tasks.reward`, with Wilson intervals.

:func:`smollm2_post_training` runs it all for a profile (sizes in :data:`REAL_RECIPES`) and
returns the accuracies, format rates and the seconds each stage took. The GPU path (CUDA
placement, bf16 autocast) is written to the libraries' documented APIs but was not run on a GPU
when it was written.

Defined in chapter 12, Post-training.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch

from . import chat as chat_lib
from . import post_training as pt
from . import verifiable_tasks as vt
from .post_training_losses import group_advantages, grpo_loss

#: The linear layers of a Llama block that get LoRA adapters: attention's four projections and
#: the SwiGLU MLP's three.
LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Rank 8, scale alpha / r = 2, no dropout: about 2.4M trainable weights on SmolLM2-135M (1.8 %).
LORA_DEFAULTS: dict[str, Any] = dict(r=8, alpha=16, dropout=0.0)


@dataclass(frozen=True)
class RealRecipe:
    """Sizes of one profile's SmolLM2 run (plain dicts, returned with the results).

    ``n_heldout``: how many of the chapter's held-out problems are scored (the first ones;
    None = all). ``n_train``: how many of the chapter's training problems SFT and GRPO draw from.
    """

    n_heldout: int | None
    n_train: int
    sft: dict[str, Any]
    grpo: dict[str, Any]
    eval: dict[str, Any]
    lora: dict[str, Any] = field(default_factory=lambda: dict(LORA_DEFAULTS))


REAL_RECIPES: dict[str, RealRecipe] = {
    # a smoke test of the code path: one or two steps of each stage, a handful of problems
    "ci": RealRecipe(
        n_heldout=4, n_train=64,
        sft=dict(steps=2, batch_size=2, lr=5e-4, warmup_steps=1),
        grpo=dict(steps=1, prompts=1, group=4, temperature=1.0, lr=5e-5, epsilon=0.2, max_new_tokens=10),
        eval=dict(max_new_tokens=10, batch_size=64)),
    # a few CPU minutes: SFT teaches the format, GRPO runs a few steps to measure its cost
    "laptop": RealRecipe(
        n_heldout=48, n_train=2000,
        sft=dict(steps=16, batch_size=8, lr=1e-3, warmup_steps=2),
        grpo=dict(steps=3, prompts=4, group=6, temperature=1.0, lr=5e-5, epsilon=0.2, max_new_tokens=10),
        eval=dict(max_new_tokens=10, batch_size=48)),
    # a GPU: all of the chapter's held-out problems and enough GRPO steps to matter (untested on a GPU)
    "gpu": RealRecipe(
        n_heldout=None, n_train=20000,
        sft=dict(steps=200, batch_size=32, lr=5e-4, warmup_steps=20),
        grpo=dict(steps=150, prompts=16, group=8, temperature=1.0, lr=5e-5, epsilon=0.2, max_new_tokens=10),
        eval=dict(max_new_tokens=10, batch_size=256)),
}


def get_real_recipe(profile: str | None = None) -> RealRecipe:
    """The profile's :class:`RealRecipe`."""
    from .profiles import get_profile

    return REAL_RECIPES[get_profile(profile).name]


# ------------------------------------------------------------------------------ prompts
def prompt_chat(problem: vt.Problem) -> list[dict[str, str]]:
    """The prompt the real model gets: the chapter's system prompt (it states the answer format)
    and the question."""
    return vt.to_chat(problem, with_answer=False, system=True)


def sft_chat(problem: vt.Problem) -> list[dict[str, str]]:
    """A training chat: :func:`prompt_chat` plus the reference answer as the assistant's turn."""
    return vt.to_chat(problem, with_answer=True, system=True)


def check_prompt_layout(tokenizer: Any, problem: vt.Problem | None = None) -> str:
    """Check that the tokenizer's own chat template renders a prompt exactly as
    :func:`course_utils.chat.render_chat` does (so prompts, the SFT mask and generation all see
    one layout); returns the rendered prompt, or raises ValueError showing both texts."""
    if problem is None:
        problem = vt.Problem("Calculate 1 + 2.", "3", "1 + 2", {})
    msgs = prompt_chat(problem)
    ours = chat_lib.render_chat(msgs, add_generation_prompt=True)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; give it course_utils.chat.CHAT_TEMPLATE "
                         "(chat.with_chat_template) or use a chat model's tokenizer")
    theirs = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if theirs != ours:
        raise ValueError("the tokenizer's chat template lays out a prompt differently from "
                         f"course_utils.chat.render_chat:\n{theirs!r}\nvs\n{ours!r}")
    return ours


# ------------------------------------------------------------------------------ model
def training_device(device: str | torch.device | None = None) -> tuple[torch.device, torch.dtype | None]:
    """``(device, autocast dtype)``: CUDA with bf16 autocast where the GPU has bf16, otherwise
    fp32 (the CPU, and GPUs without bf16: fp16 would need a gradient scaler in the GRPO loop)."""
    from .device import get_device

    dev = get_device(device)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return dev, torch.bfloat16
    return dev, None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    import contextlib

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def load_smollm2_chat() -> tuple[Any, Any]:
    """``(model, tokenizer)``: SmolLM2-135M-Instruct in fp32 from the offline copy, eval mode,
    the tokenizer padding on the left (for batched generation), its prompt layout checked."""
    from .pretrained import load_smollm2

    model, tok = load_smollm2()
    tok.padding_side = "left"
    check_prompt_layout(tok)
    return model, tok


def add_lora(model: torch.nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0,
             targets: Sequence[str] = LORA_TARGETS) -> Any:
    """``model`` wrapped by peft with LoRA adapters of rank ``r`` (scale ``alpha / r``) on the
    ``targets`` linear layers; every base weight frozen. The adapters' B matrices start at zero,
    so the wrapped model computes exactly what the base model does until it is trained.
    Returns the ``peft.PeftModel``."""
    from peft import LoraConfig, get_peft_model

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r (the LoRA rank) must be a positive int, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in targets if t not in names]
    if not targets or missing:
        raise ValueError(f"targets {list(targets)} must name linear layers of the model; not found: {missing}; "
                         f"the model's linear layers are {sorted(names)}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# ------------------------------------------------------------------------------ generation
def _stop_and_pad(tokenizer: Any) -> tuple[int, int]:
    stop = tokenizer.convert_tokens_to_ids(chat_lib.IM_END)
    if stop is None or stop == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {chat_lib.IM_END} token to stop generation at")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop
    return stop, pad


@torch.no_grad()
def generate_samples(model: Any, tokenizer: Any, problems: Sequence[vt.Problem], *, n: int = 1,
                     temperature: float = 0.0, max_new_tokens: int = 10, batch_size: int = 64,
                     seed: int | None = None, autocast_dtype: torch.dtype | None = None) -> pt.Samples:
    """``n`` completions of each problem's :func:`prompt_chat` with a transformers model's
    ``generate`` (row ``i * n + j`` is sample ``j`` of problem ``i``): greedy when
    ``temperature == 0``, else plain sampling at ``temperature`` (no top-k / top-p, the
    distribution GRPO's log-probabilities are taken under). Prompts are left-padded; generation
    stops at ``<|im_end|>``. ``seed`` seeds torch's global generator first (``generate`` draws
    from it). Returns :class:`course_utils.post_training.Samples` on the model's device:
    ``sequences`` [B, P + C], ``completion_mask`` [B, C] (1 up to and including the first
    ``<|im_end|>``), the replies as ``texts``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    for name, v in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not problems:
        raise ValueError("generate_samples needs at least one problem")
    stop, pad = _stop_and_pad(tokenizer)
    device = next(model.parameters()).device
    prompts = [chat_lib.render_chat(prompt_chat(p), add_generation_prompt=True) for p in problems]
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts for _ in range(n)]
    P, width = max(len(e) for e in enc), max(len(e) for e in enc) + max_new_tokens
    ids = torch.full((len(enc), P), pad, dtype=torch.long)
    att = torch.zeros(len(enc), P, dtype=torch.long)
    for i, e in enumerate(enc):                                   # left padding: prompts end together
        ids[i, P - len(e):] = torch.tensor(e)
        att[i, P - len(e):] = 1
    ids, att = ids.to(device), att.to(device)
    options: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=pad)
    if temperature > 0:
        options.update(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
    else:
        options.update(do_sample=False)
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    chunks = []
    with _autocast(device, autocast_dtype):
        for start in range(0, len(enc), batch_size):
            out = model.generate(input_ids=ids[start:start + batch_size],
                                 attention_mask=att[start:start + batch_size], **options)
            if out.size(1) < width:                               # every row stopped early
                out = torch.cat((out, out.new_full((out.size(0), width - out.size(1)), pad)), dim=1)
            chunks.append(out)
    model.train(was_training)
    seqs = torch.cat(chunks)
    comp = seqs[:, P:]
    is_stop = comp == stop
    completion_mask = ((is_stop.long().cumsum(1) - is_stop.long()) == 0).long()   # through the first stop
    texts = [vt.completion_text(tokenizer.decode(c[m.bool()].tolist(), skip_special_tokens=False))
             for c, m in zip(comp.cpu(), completion_mask.cpu())]
    return pt.Samples(seqs, torch.cat((att, completion_mask), dim=1), completion_mask, P, texts,
                      [p for p in problems for _ in range(n)])


def evaluate(model: Any, tokenizer: Any, problems: Sequence[vt.Problem], max_new_tokens: int = 10,
             batch_size: int = 64, autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Greedy answers to ``problems`` scored by the verifier: ``n``, ``accuracy``, ``format_rate``,
    their 95 % Wilson intervals (``accuracy_ci``, ``format_ci``), per-problem ``correct``, a few
    ``examples`` (question, reply) and ``seconds``."""
    start = time.perf_counter()
    s = generate_samples(model, tokenizer, problems, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         autocast_dtype=autocast_dtype)
    rewards = vt.score(s.texts, s.problems)
    n, k = len(problems), int(rewards.sum())
    f = sum(vt.format_ok(t) for t in s.texts)
    return {"n": n, "accuracy": k / n, "accuracy_ci": vt.wilson_interval(k, n),
            "format_rate": f / n, "format_ci": vt.wilson_interval(f, n),
            "correct": [bool(r) for r in rewards.tolist()],
            "examples": [(p.question, t) for p, t in zip(problems[:6], s.texts[:6])],
            "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------ SFT
def train_lora_sft(model: Any, tokenizer: Any, problems: Sequence[vt.Problem], steps: int, batch_size: int,
                   lr: float, warmup_steps: int = 0, progress: bool = True,
                   device: str | torch.device | None = None) -> tuple[Any, dict[str, Any]]:
    """Supervised fine-tuning of the trainable (LoRA) weights of ``model`` on ``problems`` as
    :func:`sft_chat` chats, the loss on the assistant's tokens only (mask from
    :func:`course_utils.chat.tokenize_chat`, loss :func:`course_utils.post_training.sft_batch_loss`),
    with the course's :class:`course_utils.train.Trainer` (AdamW, warm-up + cosine, clipping at
    1.0; bf16 autocast on a GPU with bf16, fp32 otherwise). Trains ``model`` in place ->
    ``(model, history)``; ``history`` is the Trainer's plus ``seconds`` and ``seconds_per_step``."""
    from .train import TrainConfig, Trainer

    if not problems:
        raise ValueError("train_lora_sft needs training problems")
    dev, dtype = training_device(device)
    _, pad = _stop_and_pad(tokenizer)
    examples = [chat_lib.tokenize_chat(tokenizer, sft_chat(p)) for p in problems]
    batches = pt.ChatBatches(examples, batch_size, lambda ex: chat_lib.pad_chats(ex, pad), seed=1)
    cfg = TrainConfig(max_steps=steps, lr=lr, warmup_steps=warmup_steps, batch_size=batch_size,
                      eval_interval=steps, eval_iters=1, weight_decay=0.0, grad_clip=1.0, progress=progress,
                      mixed_precision="bf16" if dtype is torch.bfloat16 else "no", device=str(dev),
                      compile="never")
    start = time.perf_counter()
    trainer = Trainer(model, cfg, batches, None, loss_fn=pt.sft_batch_loss)
    history = trainer.fit()
    seconds = time.perf_counter() - start
    history = {**history, "seconds": seconds, "seconds_per_step": seconds / steps}
    return trainer.unwrapped_model.eval(), history


# ------------------------------------------------------------------------------ GRPO
def batch_reward(texts: Sequence[str], problems: Sequence[vt.Problem]) -> list[float]:
    """The verifier's reward of each reply (:func:`course_utils.verifiable_tasks.reward`): a
    reward function in TRL's batched form, ``(completions, problems) -> one float each``."""
    return [vt.reward(t, p) for t, p in zip(texts, problems)]


RewardFn = Callable[[Sequence[str], Sequence[vt.Problem]], Sequence[float]]


def grpo_step(policy: Any, tokenizer: Any, optimizer: torch.optim.Optimizer, problems: Sequence[vt.Problem], *,
              group: int, temperature: float = 1.0, epsilon: float = 0.2, max_new_tokens: int = 10,
              reward_fn: RewardFn = batch_reward, seed: int | None = None,
              autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """One GRPO step: sample ``group`` answers to each of ``problems``, reward them with
    ``reward_fn(texts, problems)`` (batched, as TRL's reward functions are; checked by
    :func:`course_utils.verifiable_tasks.check_rewards`: one finite number per answer), group-normalise the
    rewards into advantages and take one optimizer step on the clipped objective over the
    completion tokens (TRL's "dapo" aggregation). The old policy is the one that sampled, so
    its log-probabilities are this pass's, detached (ratio 1 at the step's start).

    Returns ``reward`` (mean), ``informative`` (share of groups whose rewards differ: the others
    have advantage 0 and teach nothing), ``loss``, ``texts`` and ``rewards`` [N·G]."""
    device = next(policy.parameters()).device
    s = generate_samples(policy, tokenizer, problems, n=group, temperature=temperature,
                         max_new_tokens=max_new_tokens, batch_size=len(problems) * group, seed=seed,
                         autocast_dtype=autocast_dtype)
    name = getattr(reward_fn, "__name__", "reward function")
    rewards = vt.check_rewards(reward_fn(s.texts, s.problems), len(s.texts), name)
    adv = group_advantages(rewards, group).to(device)                        # [N*G]
    policy.train()
    with _autocast(device, autocast_dtype):
        logps = pt.completion_logprobs(policy, s)                            # [N*G, C]
    logps = logps.float()
    loss = grpo_loss(logps, logps.detach(), adv, s.completion_mask, epsilon=epsilon)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    policy.eval()
    informative = (rewards.view(-1, group).std(1) > 0).float().mean()
    return {"reward": float(rewards.mean()), "informative": float(informative), "loss": float(loss.detach()),
            "texts": s.texts, "rewards": rewards}


def train_lora_grpo(model: Any, tokenizer: Any, problems: Sequence[vt.Problem], steps: int, prompts: int,
                    group: int, lr: float, temperature: float = 1.0, epsilon: float = 0.2,
                    max_new_tokens: int = 10, reward_fn: RewardFn = batch_reward,
                    progress: bool = True, seed: int = 0,
                    device: str | torch.device | None = None) -> tuple[Any, dict[str, list[float]]]:
    """GRPO of the trainable (LoRA) weights of ``model``, in place: ``steps`` calls of
    :func:`grpo_step`, each on ``prompts`` problems drawn from ``problems`` with ``group``
    answers each; AdamW at ``lr`` (constant). No KL penalty (beta = 0, TRL's default).
    -> ``(model, history)`` with per step ``reward``, ``informative``, ``loss`` and ``seconds``."""
    from tqdm.auto import tqdm

    for name, v in (("steps", steps), ("prompts", prompts)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if prompts > len(problems):
        raise ValueError(f"prompts={prompts} is more than the {len(problems)} problems given")
    dev, dtype = training_device(device)
    model = model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (add LoRA adapters first: add_lora)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    rng = random.Random(seed)
    history: dict[str, list[float]] = {"step": [], "reward": [], "informative": [], "loss": [], "seconds": []}
    bar = tqdm(range(steps), desc="GRPO (LoRA)", disable=not progress, dynamic_ncols=True)
    for step in bar:
        start = time.perf_counter()
        out = grpo_step(model, tokenizer, optimizer, rng.sample(list(problems), prompts), group=group,
                        temperature=temperature, epsilon=epsilon, max_new_tokens=max_new_tokens,
                        reward_fn=reward_fn, seed=seed * 100_003 + step, autocast_dtype=dtype)
        history["step"].append(step + 1)
        for key in ("reward", "informative", "loss"):
            history[key].append(out[key])
        history["seconds"].append(time.perf_counter() - start)
        bar.set_postfix(reward=f"{out['reward']:.2f}", refresh=False)
    return model.eval(), history


# ------------------------------------------------------------------------------ the whole run
def _summary(ev: dict[str, Any]) -> str:
    lo, hi = ev["accuracy_ci"]
    return f"accuracy {ev['accuracy']:.2f} [{lo:.2f}, {hi:.2f}], format {ev['format_rate']:.2f} (n={ev['n']})"


def smollm2_post_training(profile: str | None = None, progress: bool = True, *, model: Any | None = None,
                          tokenizer: Any | None = None, recipe: RealRecipe | None = None,
                          device: str | torch.device | None = None) -> dict[str, Any]:
    """SmolLM2-135M-Instruct + LoRA: held-out accuracy before, after SFT, after GRPO.

    Uses the chapter's problems (``post_training.task_splits(post_training.get_recipe(profile))``):
    the first ``recipe.n_train`` training problems for SFT and GRPO, the first
    ``recipe.n_heldout`` held-out problems (all if None) for every evaluation. ``model`` and
    ``tokenizer`` replace SmolLM2 (a tests' tiny model); ``recipe`` replaces the profile's sizes.

    Returns a dict: ``profile``, ``recipe`` (the sizes), ``device``, ``precision``, ``lora``
    (rank, alpha, targets, trainable and total parameters), ``n_heldout``, ``before``/``sft``/
    ``grpo`` (:func:`evaluate` results: accuracy, format rate, Wilson intervals, examples),
    ``sft_history``, ``grpo_history``, ``seconds`` (per stage: load, eval_before, sft, eval_sft,
    grpo, eval_grpo, total), ``seconds_per_sft_step``, ``seconds_per_grpo_step``, and the
    trained ``model`` (the peft model) and its ``tokenizer``.
    """
    from .finetune import count_parameters
    from .profiles import get_profile

    t_total = time.perf_counter()
    name = get_profile(profile).name
    recipe = recipe if recipe is not None else REAL_RECIPES[name]
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (then SmolLM2 is loaded)")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if model is None:
        model, tokenizer = load_smollm2_chat()
    else:
        check_prompt_layout(tokenizer)
    seconds["load"] = time.perf_counter() - t

    train, heldout = pt.task_splits(pt.get_recipe(name))
    heldout = heldout if recipe.n_heldout is None else heldout[:recipe.n_heldout]
    train = train[:recipe.n_train]
    dev, dtype = training_device(device)
    model = add_lora(model.to(dev), **{k: recipe.lora[k] for k in ("r", "alpha", "dropout")})
    trainable, total = count_parameters(model)
    ev = recipe.eval

    def run_eval(stage: str) -> dict[str, Any]:
        out = evaluate(model, tokenizer, heldout, ev["max_new_tokens"], ev["batch_size"], autocast_dtype=dtype)
        seconds[f"eval_{stage}"] = out["seconds"]
        if progress:
            print(f"{stage:>6}: {_summary(out)}  ({out['seconds']:.0f} s)")
        return out

    before = run_eval("before")
    s = recipe.sft
    model, sft_history = train_lora_sft(model, tokenizer, train, s["steps"], s["batch_size"], s["lr"],
                                        s["warmup_steps"], progress=progress, device=dev)
    seconds["sft"] = sft_history["seconds"]
    after_sft = run_eval("sft")
    g = recipe.grpo
    model, grpo_history = train_lora_grpo(model, tokenizer, train, g["steps"], g["prompts"], g["group"], g["lr"],
                                          g["temperature"], g["epsilon"], g["max_new_tokens"],
                                          progress=progress, device=dev)
    seconds["grpo"] = float(sum(grpo_history["seconds"]))
    after_grpo = run_eval("grpo")
    seconds["total"] = time.perf_counter() - t_total
    return {"profile": name, "recipe": asdict(recipe), "device": str(dev),
            "precision": "bf16 autocast" if dtype is torch.bfloat16 else "fp32",
            "lora": {"r": recipe.lora["r"], "alpha": recipe.lora["alpha"], "targets": list(LORA_TARGETS),
                     "trainable": trainable, "total": total},
            "n_heldout": len(heldout), "before": before, "sft": after_sft, "grpo": after_grpo,
            "sft_history": sft_history, "grpo_history": grpo_history, "seconds": seconds,
            "seconds_per_sft_step": sft_history["seconds_per_step"],
            "seconds_per_grpo_step": seconds["grpo"] / g["steps"], "model": model, "tokenizer": tokenizer}


__all__ = ["LORA_TARGETS", "RealRecipe", "REAL_RECIPES", "get_real_recipe", "prompt_chat", "sft_chat",
           "check_prompt_layout", "training_device", "load_smollm2_chat", "add_lora", "generate_samples",
           "evaluate", "train_lora_sft", "batch_reward", "grpo_step", "train_lora_grpo", "smollm2_post_training"]
