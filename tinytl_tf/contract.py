"""The device contract: facts shared by the exporter, the LiteRT trainer and the Android app.

TF-free on purpose: `tinytl_tf.ondevice` and tests of the Android app import this module without TensorFlow.
Every name here is written into `model.json` next to an exported `.tflite`; the device side reads it from there.
"""

METHODS = ("ft-last", "ft-norm-last", "ft-full", "tinytl-b", "tinytl-l", "tinytl-lb")

# Preprocessing (REFERENCE §5): train = random-resized crop + flip, test = resize shorter side to size/0.875 + crop.
CROP_FRACTION = 0.875
RANDOM_CROP_SCALE = (0.22, 1.0)
RANDOM_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)

# Signatures of an exported training model and their tensor names.
SIGNATURE_TRAIN = "train"
SIGNATURE_INFER = "infer"
SIGNATURE_GET_WEIGHTS = "get_weights"
SIGNATURE_SET_WEIGHTS = "set_weights"
INPUT_IMAGE = "x"
INPUT_LABEL = "y"
INPUT_LEARNING_RATE = "lr"
OUTPUT_LOSS = "loss"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBABILITIES = "probabilities"

METADATA_FILE = "model.json"
METADATA_FORMAT = "tinytl_tf/model-v1"


def model_json_path(tflite_path):
    """`model.json` lives next to the `.tflite` it describes."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(tflite_path)), METADATA_FILE)
