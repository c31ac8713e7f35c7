package io.github.tinytl.demo

/**
 * The device contract's names, mirrored from `tinytl_tf/contract.py` with the same constant names and values.
 *
 * This is the only file of the app with literal signature or tensor names: everything else (input size, mean/std,
 * labels, tensor shapes and dtypes, the list of weights, the optimizer) is read from `model.json` at run time, and
 * the names below are checked against `model.json` and the interpreter before anything runs. A Python test parses
 * this file with the regex `const val (\w+) = "([^"]*)"` and compares every constant with contract.py, so keep
 * each one on a single line in exactly that form, and add nothing here that contract.py does not define.
 */
object Contract {
    const val MODEL_FILE = "model.tflite"
    const val METADATA_SUFFIX = ".json"
    const val METADATA_FILE = "model.json"
    const val METADATA_FORMAT = "tinytl_tf/model-v2"

    const val SIGNATURE_TRAIN = "train"
    const val SIGNATURE_INFER = "infer"
    const val SIGNATURE_GET_WEIGHTS = "get_weights"
    const val SIGNATURE_SET_WEIGHTS = "set_weights"
    const val SIGNATURE_LOAD = "load"
    const val INPUT_LOAD_VALUES = "values"
    const val INPUT_LOAD_GROUP = "group"

    const val INPUT_IMAGE = "x"
    const val INPUT_LABEL = "y"
    const val INPUT_LEARNING_RATE = "lr"
    const val OUTPUT_LOSS = "loss"
    const val OUTPUT_LOGITS = "logits"
    const val OUTPUT_PROBABILITIES = "probabilities"

    const val STEP_TENSOR = "step"
}
