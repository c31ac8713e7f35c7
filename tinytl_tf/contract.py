"""The device contract: facts shared by the exporter, the LiteRT trainer and the Android app.

TF-free on purpose: `tinytl_tf.ondevice` and tests of the Android app import this module without TensorFlow.
Every name here is written into `model.json` next to an exported `.tflite`; the device side reads it from there.
"""

METHODS = ("ft-last", "ft-norm-last", "ft-full", "tinytl-b", "tinytl-l", "tinytl-lb")

# Preprocessing (the TinyTL reference pipeline): train = random-resized crop + flip, test = resize shorter side to
# size/0.875 + crop.
CROP_FRACTION = 0.875
RANDOM_CROP_SCALE = (0.22, 1.0)
RANDOM_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)

# Signatures of an exported training model and their tensor names.
SIGNATURE_TRAIN = "train"
SIGNATURE_INFER = "infer"
SIGNATURE_GET_WEIGHTS = "get_weights"
SIGNATURE_SET_WEIGHTS = "set_weights"
# load(values, group): one variable group's initial value (see `initial_values`); run for every group at start
SIGNATURE_LOAD = "load"
INPUT_LOAD_VALUES = "values"
INPUT_LOAD_GROUP = "group"
INPUT_IMAGE = "x"
INPUT_LABEL = "y"
INPUT_LEARNING_RATE = "lr"
# get_weights takes one ignored scalar: LiteRT's Java runSignature refuses a signature with no inputs.
INPUT_PLACEHOLDER = "unused"
OUTPUT_LOSS = "loss"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBABILITIES = "probabilities"

# The metadata of `X.tflite` is `X.json` beside it, so several exports can share a folder: `model.json` describes
# `model.tflite`, the file name the Android app loads.
MODEL_FILE = "model.tflite"
METADATA_SUFFIX = ".json"
METADATA_FILE = "model.json"
METADATA_FORMAT = "tinytl_tf/model-v2"  # v2: variables start at zero; the initial values are X.init.npz


def model_json_path(tflite_path):
    """The metadata file of `tflite_path`: its name with `.tflite` replaced by `.json`, in the same folder."""
    import os

    root, _ = os.path.splitext(os.path.abspath(tflite_path))
    return root + METADATA_SUFFIX


# A trainable tensor's name in `get_weights` / `set_weights` and in checkpoints: its Keras weight path with "/"
# replaced by "__" (signature tensor names must be identifiers), e.g. "block_3/depthwise/bias" ->
# "block_3__depthwise__bias". Adam slots append "__m" and "__v"; the optimizer step counter is "step".
# Adam with 8-bit moments ("adam8bit") has four slots per tensor: int8 codes of m and of sqrt(v) in the tensor's
# shape ("__m", "__sqrt_v") and their float32 scales, one per block of `optimizer.block_size` consecutive values
# ("__m_scale", "__sqrt_v_scale", shape [ceil(size / block_size)]); model.json lists each one's shape and dtype.
WEIGHT_SEPARATOR = "__"
# The recipe's Adam (the paper's training setup), recorded in X.json's "optimizer" for the device.
ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8}
ADAM8BIT_BLOCK = 256  # values per block of the 8-bit optimizer's moment codes, each with one float32 scale
# The exported `train` signature's optimizer unless one is asked for: Adam with 8-bit moments keeps ~2 bytes of state
# per trained parameter instead of 8, and trained TinyTL-L+B on CIFAR-10 (mcunet-5fps@128, 20 epochs) to 78.1% test
# top-1 against 78.3 / 78.5% with float moments (docs/RESULTS.md).
DEFAULT_OPTIMIZER = "adam8bit"
FLAT_MAX_ELEMENTS = 4096  # trainable tensors smaller than this share one variable group (`load` assigns a group)
SLOT_SUFFIXES = {"adam": ("m", "v"), "sgd": (), "adam8bit": ("m", "m_scale", "sqrt_v", "sqrt_v_scale")}
SCALE_SLOT_SUFFIX = "_scale"  # a slot of one float32 per block of values, not one value per parameter
STEP_TENSOR = "step"


def weight_tensor_name(path):
    return path.replace("/", WEIGHT_SEPARATOR)


def slot_tensor_name(weight_name, slot):
    return f"{weight_name}{WEIGHT_SEPARATOR}{slot}"


# X.json (written by export/to_tflite.py next to X.tflite; the device side reads nothing else):
# {
#   "format": METADATA_FORMAT, "fingerprint": "<sha256 of the .tflite bytes>", "tflite": "X.tflite",
#   "backbone": str, "method": str, "num_classes": int, "labels": [str, ...], "batch_size": 1,
#   "input": {"height": H, "width": W, "channels": 3, "layout": "NHWC", "mean": [3 floats], "std": [3 floats],
#             "crop_fraction": CROP_FRACTION, "resize": "bilinear"},   # pixels p in [0,255] -> (p - mean) / std
#   "signatures": {SIGNATURE: {"inputs": {name: {"shape": [...], "dtype": "float32"|"int32"}},
#                              "outputs": {name: {"shape": [...], "dtype": ...}}}},
#   "weights": [{"name": str, "shape": [...], "dtype": "float32"|"int8", "kind": "trainable"|"slot"|"step"}],
#   "optimizer": {"name": "sgd"|"adam"|"adam8bit", "lr": float, "schedule": "cosine"|"constant", "total_steps": int,
#                 "beta_1": float, "beta_2": float, "epsilon": float, "label_smoothing": float,
#                 "block_size": int (adam8bit only)},
#   "ops": [builtin op names in the model],
#   "initial_values": {"file": "X.init.npz", "sha256": str, "length": int,   # the trainables' values to load at
#                      "groups": [[tensor names], ...]}                      # start, one group per `load` call
# }
#   "integrity": metadata_integrity(this dict)
METADATA_KEYS = (
    "format",
    "fingerprint",
    "tflite",
    "backbone",
    "method",
    "num_classes",
    "labels",
    "batch_size",
    "input",
    "signatures",
    "weights",
    "optimizer",
    "ops",
    "initial_values",
    "integrity",
)
# What the model's outputs mean besides its bytes: a label order, input size or normalization edited in the JSON
# would train and predict garbage silently, so `integrity` hashes them together with the file's fingerprint.
INTEGRITY_KEYS = ("fingerprint", "num_classes", "labels", "input", "initial_values")


def metadata_integrity(meta):
    """sha256 of the canonical JSON of `meta`'s INTEGRITY_KEYS."""
    import hashlib
    import json

    canonical = json.dumps({k: meta[k] for k in INTEGRITY_KEYS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
