"""`train_folder`: stream the train split of a class-per-folder tree through a model, one image per step, with
checkpoints it resumes from exactly.

Reproducibility without carrying RNG state: epoch e visits the split in `epoch_order(seed, e, n)` and the
augmentation of its i-th step draws from `item_rng(seed, e, i)`, both derived from the seed alone. A checkpoint
therefore only needs the weights (with optimizer slots and step counter) and the position (epoch, step in epoch)
for a resumed run to compute exactly what an uninterrupted one would.
"""

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from tinytl_tf import imagefiles
from tinytl_tf.errors import TinyTLError
from tinytl_tf.ondevice.checkpoint import CheckpointError, CheckpointStore
from tinytl_tf.ondevice.model import DeviceModel
from tinytl_tf.ondevice.trainer import Trainer

PROGRESS_INTERVAL = 0.25  # seconds between progress line updates
# A run is refused its checkpoint when it rolled back more than this share of its steps, or when the mean loss of
# its last steps (up to LOSS_WINDOW, a third of the run at most) exceeds DIVERGED_FACTOR x the loss it started
# from plus DIVERGED_MARGIN (nats): a learning rate that is too large but overflows nothing would otherwise
# replace good weights with ruined ones.
MAX_ROLLED_BACK_SHARE = 0.5
LOSS_WINDOW = 50
DIVERGED_FACTOR, DIVERGED_MARGIN = 2.0, 1.0


class TrainingDiverged(TinyTLError, RuntimeError):
    """The run got worse instead of better; its weights were not saved. Not a usage mistake: exit status 1."""

    exit_status = 1


def epoch_order(seed, epoch, n):
    """The permutation of the n training examples visited in `epoch`."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def item_rng(seed, epoch, step):
    """The Generator the augmentation of step `step` of `epoch` draws from."""
    return np.random.default_rng([seed, epoch, step])


@dataclass
class RunState:
    """The run's identity, position and counters: the JSON `state` of a checkpoint (the weights are beside it)."""

    seed: int
    augment: bool
    data: str  # sha256 of the train split's (relative path, label) list: resuming on other data is refused
    train_examples: int
    epoch: int = 0  # completed epochs, i.e. the index of the current one
    step_in_epoch: int = 0
    global_steps: int = 0
    rolled_back: int = 0
    epoch_loss_sum: float = 0.0  # over the current epoch's steps that were not rolled back
    epoch_correct: int = 0
    epoch_counted: int = 0
    history: list = field(default_factory=list)  # [{"epoch", "loss", "accuracy"}] per completed epoch

    def record(self, result, label):
        self.step_in_epoch += 1
        self.global_steps += 1
        if result.rolled_back:
            self.rolled_back += 1
            return
        self.epoch_loss_sum += result.loss
        self.epoch_correct += int(np.argmax(result.logits) == label)
        self.epoch_counted += 1

    def running(self):
        """(mean loss, accuracy) of the current epoch's steps that were not rolled back; None before any."""
        if not self.epoch_counted:
            return None, None
        return self.epoch_loss_sum / self.epoch_counted, self.epoch_correct / self.epoch_counted

    def end_epoch(self):
        loss, accuracy = self.running()
        self.history.append({"epoch": self.epoch + 1, "loss": loss, "accuracy": accuracy})
        self.epoch += 1
        self.step_in_epoch = self.epoch_correct = self.epoch_counted = 0
        self.epoch_loss_sum = 0.0


def train_folder(model_path, data, epochs, checkpoint, seed=0, lr=0.0, augment=True, checkpoint_every=0, progress=None):
    """Train until `epochs` epochs are complete, resuming from `checkpoint` if it exists; returns the summary.

    `data`: DIR/train/<class>/ (+ DIR/test/) or a flat DIR/<class>/ split by `seed` (imagefiles.scan_image_folder);
    class folders map to the model's labels by name. Preprocessing: `DeviceModel.preprocessing` (imagefiles's train
    transform when `augment`, else its eval transform). A checkpoint is written after every epoch and every
    `checkpoint_every` steps (0: only after epochs). `progress`: a stream for the carriage-return progress line
    (None: silent). A resumed run must use the same seed, augment setting and training images; `lr` may change.
    The checkpoint's folder is created; `<checkpoint>.lock` keeps a second trainer out; a run that diverged
    (`_Health`) raises TrainingDiverged instead of saving, so the checkpoint it started from stays.
    """
    if epochs < 1 or checkpoint_every < 0 or seed < 0:
        raise ValueError(
            f"need epochs >= 1, checkpoint_every >= 0 and seed >= 0 (got {epochs}, {checkpoint_every}, {seed})"
        )
    model = DeviceModel(model_path)
    trainer = Trainer(model)
    store = CheckpointStore(checkpoint, model)
    os.makedirs(os.path.dirname(store.path), exist_ok=True)
    with _exclusive(store.path):
        return _train(model, trainer, store, data, epochs, seed, lr, augment, checkpoint_every, progress)


@contextlib.contextmanager
def _exclusive(checkpoint):
    """Hold an exclusive lock on `<checkpoint>.lock`: a second trainer on the same checkpoint would delete the
    first one's temp files or silently lose its work. The lock file stays (removing it would race)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(f"{checkpoint}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                f"checkpoint {checkpoint} is in use by another training run (it holds "
                f"{checkpoint}.lock); wait for it to finish or pass another --checkpoint"
            ) from None
        yield


def _train(model, trainer, store, data, epochs, seed, lr, augment, checkpoint_every, progress):
    saved = store.load()  # before scanning the images: a foreign or broken checkpoint fails fast
    split = imagefiles.scan_image_folder(data, seed=seed)
    examples = _examples(split, model.labels, data)
    state = RunState(seed, bool(augment), _data_id(examples, model.labels, data), len(examples))
    resumed = None
    if saved:
        state = _resumed_state(saved, state)
        trainer.set_weights(saved.weights)
        resumed = {"checkpoint": saved.source, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch}
        if state.epoch >= epochs and progress is not None:
            progress.write(
                f"checkpoint {saved.source} has already completed {state.epoch} epochs (--epochs "
                f"{epochs}): nothing to train; pass a larger --epochs to continue\n"
            )
    store.remove_leftovers()

    n, meter, health = len(examples), _Progress(progress, epochs, len(examples)), _Health(state)
    start, steps = time.monotonic(), 0

    def save():
        problem = health.problem(state)
        if problem:
            raise TrainingDiverged(
                f"training got worse ({problem}), so {store.path} was not replaced; train again with a smaller --lr"
            )
        store.save(trainer.weights, asdict(state))

    for epoch in range(state.epoch, epochs):
        order = epoch_order(seed, epoch, n)
        for i in range(state.step_in_epoch, n):
            path, label = examples[order[i]]
            image = imagefiles.load_rgb(path)
            x = (
                model.preprocessing.train_tensor(image, item_rng(seed, epoch, i))
                if augment
                else model.preprocessing.eval_tensor(image)
            )
            result = trainer.train_step(x, label, lr)
            state.record(result, label)
            health.record(result)
            steps += 1
            if checkpoint_every and state.global_steps % checkpoint_every == 0 and state.step_in_epoch < n:
                save()
            meter.show(state, steps / max(time.monotonic() - start, 1e-6))
        state.end_epoch()
        meter.end_line()
        save()
    seconds = time.monotonic() - start
    last = state.history[-1] if state.history else {}
    return {
        "epochs": state.epoch,
        "global_steps": state.global_steps,
        "train_examples": n,
        "skipped": split.skipped,
        "rolled_back": state.rolled_back,
        "loss": last.get("loss"),
        "accuracy": last.get("accuracy"),
        "history": state.history,
        "checkpoint": store.path,
        "resumed": resumed,
        "steps": steps,
        "seconds": round(seconds, 3),
        "steps_per_s": round(steps / seconds, 2) if steps and seconds else None,
    }


def _examples(split, labels, data):
    """[(path, model label index)] of the train split; its class folders must be exactly the model's labels."""
    folders, known = set(split.class_names), set(labels)
    if folders != known:
        raise imagefiles.DataError(
            f"the class folders under {data} are not the model's labels {list(labels)}: folders that are no label "
            f"{sorted(folders - known)}, labels without a folder {sorted(known - folders)}; training needs one folder "
            "per label"
        )
    return [(path, labels.index(split.class_names[i])) for path, i in split.train]


def _data_id(examples, labels, data):
    pairs = [(os.path.relpath(path, data), labels[label]) for path, label in examples]
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


class _Health:
    """This run's step count, rollbacks and losses, for refusing to save a run that diverged. The loss it started
    from: the resumed checkpoint's (its current epoch so far, else its last epoch), else this run's first step's
    (a forward pass of the starting weights)."""

    def __init__(self, state):
        self.before, self.steps, self.losses = state.rolled_back, 0, []
        running, _ = state.running()
        last_epoch = state.history[-1]["loss"] if state.history else None
        self.start = running if running is not None else last_epoch

    def record(self, result):
        self.steps += 1
        if not result.rolled_back:
            self.losses.append(result.loss)
            if self.start is None:
                self.start = result.loss

    def problem(self, state):
        """Why the weights must not be saved, or None."""
        rolled_back = state.rolled_back - self.before
        if self.steps and rolled_back > MAX_ROLLED_BACK_SHARE * self.steps:
            return f"{rolled_back} of its {self.steps} steps were rolled back for non-finite values"
        k = min(LOSS_WINDOW, max(1, len(self.losses) // 3))
        if self.losses and self.start is not None:
            end = float(np.mean(self.losses[-k:]))
            if not end <= DIVERGED_FACTOR * self.start + DIVERGED_MARGIN:
                return f"the loss rose from {self.start:.4g} to {end:.4g} (mean of its last {k} steps)"
        return None


_STATE_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,), list: (list,)}


def _resumed_state(saved, fresh):
    """The checkpoint's RunState, refused when it is another run's (seed, augmentation or images differ)."""
    try:
        state = RunState(**saved.state)
    except TypeError as e:
        raise CheckpointError(f"checkpoint {saved.source} has an unknown state layout ({e})") from None
    for f in fields(RunState):
        value, wanted = getattr(state, f.name), _STATE_TYPES[f.type]
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            raise CheckpointError(
                f"checkpoint {saved.source} is malformed: its state field '{f.name}' is "
                f"{type(value).__name__} {value!r}, not {wanted[-1].__name__}; pass another --checkpoint"
            )
    differences = [
        f"{key}: checkpoint {getattr(state, key)!r}, now {getattr(fresh, key)!r}"
        for key in ("seed", "augment", "train_examples", "data")
        if getattr(state, key) != getattr(fresh, key)
    ]
    if differences:
        raise CheckpointError(
            f"checkpoint {saved.source} is of another run ({'; '.join(differences)}); resume with "
            "the same --seed, augmentation and training images, or pass a new --checkpoint"
        )
    return state


class _Progress:
    """One carriage-return-updated line per epoch: epoch, step/total, running loss and accuracy, steps/s."""

    def __init__(self, stream, epochs, steps_per_epoch):
        self.stream, self.epochs, self.total, self.last, self.width = stream, epochs, steps_per_epoch, 0.0, 0

    def show(self, state, rate):
        now = time.monotonic()
        if self.stream is None or (now - self.last < PROGRESS_INTERVAL and state.step_in_epoch < self.total):
            return
        self.last = now
        loss, accuracy = ("-" if v is None else f"{v:.4f}" for v in state.running())
        line = (
            f"epoch {state.epoch + 1}/{self.epochs}  step {state.step_in_epoch}/{self.total}  loss {loss}  "
            f"acc {accuracy}  {rate:.1f} steps/s  rolled back {state.rolled_back}"
        )
        self.stream.write("\r" + line.ljust(self.width))  # blanks the rest of a longer previous line
        self.width = len(line)
        self.stream.flush()

    def end_line(self):
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0
