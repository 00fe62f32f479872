"""Training through sentence-transformers' own trainer: in-batch negatives, Matryoshka below the
native dimension, LoRA through peft merged into a plain model directory, checkpoints to resume.

Needs the `train` extra (datasets, accelerate, peft); the worker's runtime does not.
"""

import logging
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
    losses,
)
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as transformers_logging

from migrations.finetune.pairs import Pair
from workers.embedding import resolve_model

log = logging.getLogger(__name__)

# The cached loss (GradCache) lets a GPU train with large in-batch negatives in bounded memory;
# below this batch size plain in-batch negatives fit anyway.
CACHED_LOSS_MIN_BATCH = 64
CACHED_MINI_BATCH = 32
LORA_RANK = 16
LORA_ALPHA = 32
LORA_DROPOUT = 0.05
# Checkpoints: about this many per run, at most one every MIN_CHECKPOINT_STEPS (each holds the
# optimizer state, twice the model for Adam). Ctrl-C saves one whenever it comes.
CHECKPOINTS_PER_RUN = 10
MIN_CHECKPOINT_STEPS = 25
CHECKPOINT_DIR = "checkpoints"
# Default learning rates. Company pair sets are small (a few thousand pairs): measured on 967
# English-Vietnamese pairs with all-MiniLM-L6-v2 (ops/bench/finetune.py), held-out MRR@10 went
# from 0.148 to 0.231 with 2e-5 for one epoch, 0.379 with 1e-4, and 0.522 with 1e-4 for three.
# A large model moves further per step: above SMALL_MODEL_PARAMETERS the usual 2e-5.
SMALL_MODEL_PARAMETERS = 200_000_000
LEARNING_RATE_SMALL, LEARNING_RATE_LARGE, LEARNING_RATE_LORA = 1e-4, 2e-5, 2e-4
WARMUP_RATIO = 0.1


@dataclass
class TrainOptions:
    base: str
    out: Path
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float | None = None
    lora: bool = False
    dim: int | None = None
    native_dim: int = 0  # the base model's own dimension
    device: str = "cpu"
    seed: int = 42

    def rate_for(self, model: SentenceTransformer) -> float:
        """--learning-rate, else the default for LoRA or for the model's size."""
        if self.learning_rate:
            return self.learning_rate
        if self.lora:
            return LEARNING_RATE_LORA
        parameters = sum(parameter.numel() for parameter in model.parameters())
        return LEARNING_RATE_SMALL if parameters < SMALL_MODEL_PARAMETERS else LEARNING_RATE_LARGE


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[dict] = field(default_factory=list)
    loss: str = ""
    resumed_from_step: int = 0


def load_model(base: str, device: str) -> SentenceTransformer:
    transformers_logging.disable_progress_bar()  # one progress bar: ours
    info = resolve_model(base)
    source = info.name if info.is_hub_id else str(info.path)
    return SentenceTransformer(source, device=device)


def train(model: SentenceTransformer, pairs: list[Pair], options: TrainOptions, query_prompt: str) -> TrainResult:
    """Fine-tune `model` in place on `pairs`; resumes from the last checkpoint under `options.out`."""
    options.learning_rate = options.rate_for(model)  # before the adapters: the model's own size
    if options.lora:
        _add_lora(model)
    dataset = _dataset(pairs)
    total_steps = -(-len(pairs) // options.batch_size) * options.epochs
    checkpoints = options.out / CHECKPOINT_DIR
    on_cuda = options.device.startswith("cuda")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        # A number of steps, not warmup_ratio: transformers 5 deprecates the ratio, 4 has no float steps.
        warmup_steps=int(WARMUP_RATIO * total_steps),
        bf16=on_cuda,
        use_cpu=not on_cuda,
        seed=options.seed,
        batch_sampler="no_duplicates",  # a duplicate in a batch would be its own false negative
        prompts={"query": query_prompt} if query_prompt else None,
        logging_steps=1,
        save_strategy="steps",
        save_steps=max(MIN_CHECKPOINT_STEPS, total_steps // CHECKPOINTS_PER_RUN),
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
    )
    interrupt = StopOnInterrupt()
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=_loss(model, options), callbacks=[interrupt, Progress()]
    )
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    started = time.perf_counter()
    with interrupt.installed():
        trainer.train(resume_from_checkpoint=last)
    if interrupt.requested:
        raise KeyboardInterrupt
    losses = [{"step": entry["step"], "loss": entry["loss"]} for entry in trainer.state.log_history if "loss" in entry]
    return TrainResult(
        steps=trainer.state.global_step,
        seconds=time.perf_counter() - started,
        losses=losses,
        loss=_loss_name(options),
        resumed_from_step=int(Path(last).name.rsplit("-", 1)[1]) if last else 0,
    )


def save(model: SentenceTransformer, out: Path) -> None:
    """The model as a plain sentence-transformers directory (LoRA merged); the checkpoints go."""
    merge_lora(model)
    model.save_pretrained(str(out))
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)


def _dataset(pairs: list[Pair]):
    """One dataset of (query, positive[, negative]); two, trained side by side, where only some
    pairs have a hard negative."""
    from datasets import Dataset, DatasetDict

    triplets = [pair for pair in pairs if pair.negative]
    plain = [pair for pair in pairs if not pair.negative]
    made = {}
    if triplets:
        made["triplets"] = Dataset.from_dict(
            {
                "query": [p.query for p in triplets],
                "positive": [p.positive for p in triplets],
                "negative": [p.negative for p in triplets],
            }
        )
    if plain:
        made["pairs"] = Dataset.from_dict({"query": [p.query for p in plain], "positive": [p.positive for p in plain]})
    return next(iter(made.values())) if len(made) == 1 else DatasetDict(made)


def _loss(model: SentenceTransformer, options: TrainOptions):
    if options.device.startswith("cuda") and options.batch_size >= CACHED_LOSS_MIN_BATCH:
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=CACHED_MINI_BATCH)
    else:
        loss = losses.MultipleNegativesRankingLoss(model)
    if options.dim and options.dim < options.native_dim:
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=matryoshka_dims(options.native_dim, options.dim))
    return loss


def _loss_name(options: TrainOptions) -> str:
    cached = options.device.startswith("cuda") and options.batch_size >= CACHED_LOSS_MIN_BATCH
    name = "CachedMultipleNegativesRankingLoss" if cached else "MultipleNegativesRankingLoss"
    if options.dim and options.dim < options.native_dim:
        return f"MatryoshkaLoss({name}, dims={matryoshka_dims(options.native_dim, options.dim)})"
    return name


def matryoshka_dims(native: int, target: int) -> list[int]:
    """The native dimension, halved down to the target, then the target itself."""
    dims = [native]
    while dims[-1] // 2 > target:
        dims.append(dims[-1] // 2)
    return [*dims, target]


def _add_lora(model: SentenceTransformer) -> None:
    """LoRA adapters on every linear layer of the transformer, through peft itself (the model's
    own transformers integration asks for a newer peft than every release has)."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules="all-linear",
    )
    model[0].model = get_peft_model(model[0].model, config)


def merge_lora(model: SentenceTransformer) -> None:
    """The adapters folded into the weights: a plain model that loads without peft."""
    if hasattr(model[0].model, "merge_and_unload"):
        model[0].model = model[0].model.merge_and_unload()


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C during training asks for a checkpoint at the end of the current step, then stops;
    a second Ctrl-C stops at once (the last periodic checkpoint stays)."""

    def __init__(self) -> None:
        self.requested = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    @contextmanager
    def installed(self) -> Iterator[None]:
        def ask(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nstopping after this step, with a checkpoint (Ctrl-C again: at once)", file=sys.stderr)

        previous = signal.signal(signal.SIGINT, ask)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


class Progress(TrainerCallback):
    """A progress bar on stderr: steps, the latest loss, the time left."""

    bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()
