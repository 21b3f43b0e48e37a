"""Training configuration and the named recipes.

A recipe is a complete, frozen :class:`TrainConfig`; every field can be overridden on the command
line (``mnist-cnn train --recipe deep --epochs 5``), and the resolved config is saved with the run.
:class:`ServeSettings` does the same for ``mnist-cnn serve``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .augment import Augmentation
from .classifier import RUNTIMES
from .runtime import MAX_THREADS, PRECISIONS

LR_SCHEDULES = ("constant", "cosine", "onecycle")
# Below this (calibrated) probability a digit is "not sure": `?` in `mnist-cnn read`, `uncertain` in
# /v1/read, `uncertain` and `not_a_digit` in /v1/predict. One value for the CLI, the library and the service.
DEFAULT_MIN_CONFIDENCE = 0.5


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    model: str = field(default="basic", metadata=_help("architecture from the model registry"))
    epochs: int = field(
        default=10, metadata=_help("passes over the training set; more helps until validation stops improving")
    )
    batch_size: int = field(
        default=32,
        metadata=_help("images per step; larger is faster per epoch on a CPU, but may need a higher learning rate"),
    )
    lr: float = field(default=1e-3, metadata=_help("Adam learning rate (Keras' default is 1e-3)"))
    weight_decay: float = field(
        default=0.0, metadata=_help("decoupled weight decay (AdamW) when > 0; the seeds used none")
    )
    lr_schedule: str = field(
        default="constant",
        metadata=_help("'constant' like the seeds, 'cosine' decay to zero, or 'onecycle' (linear decay to zero)"),
    )
    warmup: float = field(
        default=0.0, metadata=_help("fraction of all steps spent raising the learning rate linearly from zero")
    )
    label_smoothing: float = field(default=0.0, metadata=_help("label smoothing of the cross-entropy loss (0 = none)"))
    ema: float = field(
        default=0.0,
        metadata=_help("decay of an exponential moving average of the weights, validated and saved instead (0 = off)"),
    )
    aug_rotate: float = field(default=0.0, metadata=_help("augmentation: random rotation up to this many degrees"))
    aug_scale: float = field(default=0.0, metadata=_help("augmentation: random zoom by up to this fraction"))
    aug_shear: float = field(default=0.0, metadata=_help("augmentation: random shear up to this many degrees"))
    aug_translate: float = field(
        default=0.0, metadata=_help("augmentation: random shift up to this fraction of the image side")
    )
    aug_elastic: float = field(
        default=0.0, metadata=_help("augmentation: elastic distortion of up to this many pixels (0 = off)")
    )
    aug_stroke: float = field(
        default=0.0,
        metadata=_help(
            "augmentation: thicken or thin strokes by up to this many pixels (grey-scale dilation/erosion), for"
            " pens from a fine liner to a marker that MNIST's writers did not use (0 = off)"
        ),
    )
    aug_pencil: float = field(
        default=0.0,
        metadata=_help(
            "augmentation: fade the ink by up to this fraction, with grain, as pencil and worn pens write (0 = off)"
        ),
    )
    aug_blur: float = field(
        default=0.0,
        metadata=_help("augmentation: Gaussian blur of up to this many pixels, as out-of-focus photos give (0 = off)"),
    )
    aug_lowres: int = field(
        default=0,
        metadata=_help(
            "augmentation: reduce the digit to a random side of this many pixels or more (4-27) and scale it"
            " back up, as tiny scans and thumbnails give (0 = off)"
        ),
    )
    aug_crop: float = field(
        default=0.0,
        metadata=_help(
            "augmentation: cut up to this fraction of the digit off at one side and frame the rest again, as a"
            " crop drawn too tight does (0 = off; above about 0.15 a 0 can become a C)"
        ),
    )
    aug_corrupt_p: float = field(
        default=0.5,
        metadata=_help(
            "chance that each of --aug-stroke/pencil/blur/lowres/crop hits a training image; the rest stay clean,"
            " so clean digits are still learnt"
        ),
    )
    init: str = field(
        default="",
        metadata=_help(
            "start from the weights of this model folder instead of random ones (fine-tuning); it must hold"
            " the same architecture as --model"
        ),
    )
    photo_digits: int = field(
        default=0,
        metadata=_help(
            "this many training digits are also photographed as ink on paper and put back through the"
            " preprocessing (mnist_cnn.synthetic.photographed) and added to the training set, so the model"
            " learns what `predict` and `read` make of real photos (about 8 ms each, once, before training)"
        ),
    )
    pen_digits: int = field(
        default=0,
        metadata=_help(
            "this many digits drawn with a pen in ways of writing MNIST rarely has (a 1 with a flag and a base,"
            " a crossed 7, a 9 with a straight or hooked tail, an open 4; mnist_cnn.pen_digits) are added to"
            " the training set, so other writers' styles are not read as other digits (about 1 ms each, once)"
        ),
    )
    reject_weight: float = field(
        default=0.0,
        metadata=_help(
            "weight of a loss that teaches the model to be unsure (uniform probabilities) of parts of digits"
            " and pairs of touching digits (mnist_cnn.synthetic.digit_parts), so `read` can tell a wrong cut"
            " from a digit; a quarter-batch of them joins every step (0 = off)"
        ),
    )
    not_digits: int = field(
        default=0,
        metadata=_help(
            "this many generated not-digits (dots, dashes, crosses, scribbles, crossings-out, coils, smudges,"
            " letters, near-blank pages; mnist_cnn.synthetic.not_digits) join the images --reject-weight teaches the model to be"
            ' unsure of, so junk gets "not sure" instead of a confident digit (about 10 ms each, once,'
            " before training; needs --reject-weight)"
        ),
    )
    channels_last: bool = field(
        default=True, metadata=_help("channels-last (NHWC) tensors: 1.2-1.4x faster training steps on CPU, measured")
    )
    precision: str = field(
        default="fp32",
        metadata=_help(
            "training-step arithmetic: 'fp32', 'bf16' (bfloat16 autocast; weights, optimiser and evaluation stay"
            " float32; 1.5x faster steps measured on a CPU with AVX512-BF16, much slower on one without) or"
            " 'auto' (bf16 where the CPU or GPU computes it natively, else fp32)"
        ),
    )
    val_split: int | float = field(
        default=5000,
        metadata=_help("validation images held out of the training set: a count, or a fraction such as 0.3"),
    )
    seed: int = field(
        default=0, metadata=_help("seeds the split, initialisation and shuffling, so a run can be repeated")
    )
    split_seed: int | None = field(
        default=None,
        metadata=_help(
            "seeds the validation split alone (default: --seed); give the members of an ensemble one split"
            " so the ensemble can be validated too"
        ),
    )
    limit: int = field(default=0, metadata=_help("train on only the first N training images (0 = all); for quick runs"))
    eval_batch_size: int = field(
        default=1000, metadata=_help("images per forward pass when evaluating; only affects speed and memory")
    )

    def __post_init__(self):
        from .data import parse_val_split
        from .models import list_models

        _check_numbers(self)
        if self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}; choose one of: {', '.join(list_models())}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if (
            not self.lr > 0
            or min(
                self.weight_decay, self.limit, self.photo_digits, self.pen_digits, self.reject_weight, self.not_digits
            )
            < 0
        ):
            raise ValueError(
                "lr must be > 0, and weight_decay, limit, photo_digits, pen_digits, reject_weight and not_digits must be >= 0"
            )
        if self.not_digits > 0 and self.reject_weight <= 0:
            raise ValueError("not_digits are only used by the reject loss: give reject_weight > 0 as well")
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1 or not 0 <= self.ema < 1:
            raise ValueError("warmup, label_smoothing and ema must each be in [0, 1)")
        _ = self.augmentation  # validates the ranges
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")
        # The one place a split is read: "5000" or "0.3" (the CLI, and configs saved before it was a
        # number) become 5000 or 0.3, so every user of a config sees a number.
        object.__setattr__(self, "val_split", parse_val_split(self.val_split))

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(
            rotate=self.aug_rotate, scale=self.aug_scale, shear=self.aug_shear,
            translate=self.aug_translate, elastic=self.aug_elastic, stroke=self.aug_stroke, pencil=self.aug_pencil,
            blur=self.aug_blur, lowres=self.aug_lowres, crop=self.aug_crop, corrupt_p=self.aug_corrupt_p,
        )  # fmt: skip

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """A config as ``run.json`` or a checkpoint saved it, filled in with today's defaults (for fields added
        since). ValueError saying what is wrong when this version cannot read it: an unknown field, a wrong type."""
        if not isinstance(saved, dict):
            raise ValueError(f"a saved training config must be a JSON object, got {saved!r}"[:200])
        unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown training config field {unknown[0]!r} (written by another mnist-cnn?)")
        try:
            return cls(**{**cls().to_dict(), **saved})
        except TypeError as exc:  # e.g. a list where a number goes
            raise ValueError(str(exc)) from None

    @property
    def validation_seed(self) -> int:
        return validation_seed(self.to_dict())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_numbers(settings) -> None:
    """Every numeric field of a config dataclass is a finite number of its declared kind (``inf`` and ``nan``
    parse as floats, and would train or serve garbage without a word)."""
    for f in dataclasses.fields(settings):
        value, kind = getattr(settings, f.name), str(f.type)
        if kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{f.name} must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")


def validation_seed(train_config: dict) -> int:
    """The seed of a run's validation split, from its saved train_config (older runs: their seed)."""
    split_seed = train_config.get("split_seed")
    return int(train_config["seed"] if split_seed is None else split_seed)


def validation_of(model_config: dict) -> tuple[int | float, int] | None:
    """``(val_split, seed)`` of the images a model folder was selected on, or None if it does not say.

    A run records its train_config; an ensemble records the split its members share, if they share one.
    """
    from .data import parse_val_split  # folders saved before val_split was a number hold "5000"

    if "validation" in model_config:
        validation = model_config["validation"]
        return parse_val_split(validation["val_split"]), int(validation["seed"])
    train_config = model_config.get("train_config") or {}
    if "val_split" in train_config and "seed" in train_config:
        return parse_val_split(train_config["val_split"]), validation_seed(train_config)
    return None


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: TrainConfig
    fine_tunes: bool = False  # starts from a trained run, so it needs --init RUN


# The seed projects' settings, each as published.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("basic", "Conv32-Conv64-Dense128, Adam, 10 epochs, batch 32 (the most common Keras seed)",
               TrainConfig(model="basic", epochs=10, batch_size=32)),
        Recipe("dropout", "Conv32-Conv64-Dropout-Dense10, Adam, 10 epochs, batch 32, 30% validation",
               TrainConfig(model="dropout", epochs=10, batch_size=32, val_split=0.3)),
        Recipe("three-conv", "Conv32-Conv64-Conv64-Dense64 (TensorFlow tutorial), Adam, 5 epochs, batch 128",
               TrainConfig(model="three-conv", epochs=5, batch_size=128)),
        Recipe("deep", "VGG-style conv/BN/pool/dropout network, Adam, 30 epochs, batch 256, cosine decay",
               TrainConfig(model="deep", epochs=30, batch_size=256, lr_schedule="cosine")),
        # Ours. Every setting below was chosen on the validation split (docs/benchmarks.md).
        Recipe("fast", "the fastest route to 99%: 29k-parameter conv net, one epoch, batch 256, one-cycle lr 0.01, label smoothing, bfloat16 where native",
               TrainConfig(model="fast-valid", epochs=1, batch_size=256, lr=1e-2, lr_schedule="onecycle", warmup=0.2,
                           label_smoothing=0.1, precision="auto")),
        Recipe("best", "the most accurate single model in minutes: affine and elastic augmentation, EMA, label smoothing, cosine decay, bfloat16 where native",
               TrainConfig(model="best", epochs=32, batch_size=128, lr=4e-3, lr_schedule="cosine", warmup=0.05,
                           label_smoothing=0.1, ema=0.998, aug_rotate=10, aug_scale=0.1, aug_translate=0.1,
                           aug_elastic=2, precision="auto")),
        Recipe("reader", "for reading photos and strings (`read`): fine-tunes a trained `best` run (--init RUN) for 3 epochs on its digits plus 30,000 photographed ones, taught to be unsure of parts of digits",
               TrainConfig(model="best", epochs=3, batch_size=128, lr=1e-3, lr_schedule="cosine", warmup=0.1,
                           label_smoothing=0.1, ema=0.998, aug_rotate=10, aug_scale=0.1, aug_translate=0.1,
                           photo_digits=30_000, reject_weight=0.5, precision="auto"),
               fine_tunes=True),
        # The default model's recipe: reader's, plus the pens, scanners and crops of other writers, and junk;
        # a lower learning rate than reader's keeps more of the base's validation accuracy (docs/benchmarks.md).
        Recipe("robust", "for other people's handwriting and junk (the shipped default): fine-tunes a trained `best` run (--init RUN) for 3 epochs with other pens, pencil, blur, low resolution, tight crops, strong slant and rotation and 30,000 photographed digits, taught to be unsure of parts of digits and of 10,000 generated not-digits",
               TrainConfig(model="best", epochs=3, batch_size=128, lr=3e-4, lr_schedule="cosine", warmup=0.1,
                           label_smoothing=0.1, ema=0.998, aug_rotate=20, aug_scale=0.1, aug_shear=15, aug_translate=0.1,
                           aug_stroke=1.0, aug_pencil=0.5, aug_blur=1.0, aug_lowres=10, aug_crop=0.1, aug_corrupt_p=0.3,
                           photo_digits=30_000, reject_weight=0.5, not_digits=10_000, precision="auto"),
               fine_tunes=True),
    )
}  # fmt: skip

DEFAULT_RECIPE = "basic"


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None


@dataclass(frozen=True)
class ServeSettings:
    """Settings of the REST service (``mnist_cnn.serve.Settings``); each field is also a flag of ``mnist-cnn serve``."""

    runtime: str = field(default="onnxruntime", metadata={"help": "inference runtime: torch, onnxruntime (faster here, see docs/benchmarks.md) or onnxruntime-int8 (model.int8.onnx)"})  # fmt: skip
    threads: int = field(default=1, metadata={"help": "CPU threads for one forward pass; the event loop needs a core too"})  # fmt: skip
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body in bytes, else 413"})
    max_image_pixels: int = field(default=16_000_000, metadata={"help": "largest uploaded image (width x height), else 413"})  # fmt: skip
    image_formats: str = field(default="PNG,JPEG,GIF,BMP,WEBP,TIFF", metadata={"help": "uploaded image formats accepted (as Pillow names them), else 415"})  # fmt: skip
    max_batch: int = field(default=64, metadata={"help": "most requests computed in one forward pass"})
    max_queue: int = field(default=256, metadata={"help": "requests waiting for the model, or uploads being received and decoded, before new ones get 503"})  # fmt: skip
    batch_wait_ms: float = field(default=0.0, metadata={"help": "wait this long for more requests before a forward pass (0: take what is queued)"})  # fmt: skip
    min_confidence: float = field(default=DEFAULT_MIN_CONFIDENCE, metadata={"help": "below this probability the answer is flagged not confident"})  # fmt: skip
    decode_slots: int = field(default=0, metadata={"help": "uploads decoded at once (0: one per CPU core); more wait, up to --decode-wait-s, then 503"})  # fmt: skip
    decode_pixels: int = field(default=0, metadata={"help": "most pixels (width x height, as the uploads' headers declare them) decoded at once, which bounds the decodes' memory together: about 16 bytes a pixel for the worst formats (0: --max-image-pixels, one full-size image at a time); more wait, up to --decode-wait-s, then 503"})  # fmt: skip
    decode_processes: int = field(default=0, metadata={"help": "processes beside the server that decode and preprocess the photos of /v1/predict (0: the server's own threads, one core's worth of Python); on a machine with cores to spare, one per core about doubles the uploads a second"})  # fmt: skip
    decode_wait_s: float = field(default=5.0, metadata={"help": "longest an upload waits for a decode slot and its pixels before 503 + Retry-After (below common client timeouts)"})  # fmt: skip
    limit_concurrency: int = field(default=900, metadata={"help": "most open connections: at the cap a new one closes the connection idle longest (408), or gets 503 when all are busy; lowered to leave 64 file descriptors under a tighter ulimit -n, so a flood of silent sockets cannot take the process off the air"})  # fmt: skip
    timeout_keep_alive_s: int = field(default=5, metadata={"help": "close an idle keep-alive connection after this many seconds"})  # fmt: skip
    header_timeout_s: float = field(default=10.0, metadata={"help": "close a connection whose request line and headers are not all in after this many seconds (408), so silent and slow-header clients let go of their sockets"})  # fmt: skip
    max_header_bytes: int = field(default=65_536, metadata={"help": "largest request line and headers in bytes, else 431 and the connection is closed"})  # fmt: skip
    retry_after_s: int = field(default=1, metadata={"help": "Retry-After seconds sent with a 503"})
    access_log: bool = field(default=True, metadata={"help": "one JSON line per request on the 'mnist_cnn.access' logger"})  # fmt: skip

    def __post_init__(self):
        _check_numbers(self)
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose one of: {', '.join(RUNTIMES)}")
        for name in ("threads", "max_body_bytes", "max_image_pixels", "max_batch", "max_queue", "limit_concurrency",
                     "timeout_keep_alive_s", "max_header_bytes"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.threads > MAX_THREADS:
            raise ValueError(f"threads must be at most {MAX_THREADS}, got {self.threads}")
        if not self.header_timeout_s > 0:
            raise ValueError(f"header_timeout_s must be above 0, got {self.header_timeout_s}")
        if min(self.batch_wait_ms, self.retry_after_s, self.decode_slots, self.decode_pixels, self.decode_processes,
               self.decode_wait_s) < 0:  # fmt: skip
            raise ValueError(
                "batch_wait_ms, retry_after_s, decode_slots, decode_pixels, decode_processes and decode_wait_s must not"
                " be negative"
            )
        if self.decode_processes > MAX_THREADS:
            raise ValueError(f"decode_processes must be at most {MAX_THREADS}, got {self.decode_processes}")
        if not 0 <= self.min_confidence <= 1:
            raise ValueError("min_confidence must be between 0 and 1")

    @property
    def formats(self) -> set[str]:
        return {f.strip().upper() for f in self.image_formats.split(",") if f.strip()}
