"""The accuracy predictor (TinyTL Appendix A): an MLP from a sub-net's one-hot encoding to its held-out accuracy.

Measuring a sub-net costs a pass over the held-out images; the predictor costs microseconds, which is what lets
the evolutionary search score thousands of candidates. What matters for the search is the *order* it puts
sub-nets in, so its quality is reported as rank correlations (`ranking`) on pairs it never saw.
"""

import keras
import numpy as np

from tinytl_tf.supernet.space import SuperSpec, encode

HIDDEN_UNITS = (400, 400, 400)


def build_predictor(input_dim, mean=0.0, std=1.0, hidden=HIDDEN_UNITS):
    """An MLP (ReLU hidden layers) that learns standardised accuracies and rescales them by the training pairs'
    `mean` and `std`: sub-net accuracies differ by a few points, too little for a raw squared error to rank."""
    layers = [keras.Input((input_dim,), name="encoding")]
    layers += [keras.layers.Dense(units, activation="relu", name=f"hidden_{i}") for i, units in enumerate(hidden)]
    layers += [
        keras.layers.Dense(1, name="standardised"),
        keras.layers.Rescaling(scale=float(std), offset=float(mean), name="accuracy"),
    ]
    return keras.Sequential(layers, name="accuracy_predictor")


def fit_predictor(encodings, accuracies, epochs=200, batch_size=32, lr=1e-3, seed=0, verbose=0):
    """Train a fresh predictor on (encoding, accuracy) pairs with Adam on the squared error."""
    x = np.asarray(encodings, np.float32)
    y = np.asarray(accuracies, np.float32)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"the predictor needs matching, non-empty pairs (got {len(x)} encodings, {len(y)} accuracies)")
    keras.utils.set_random_seed(seed)
    std = float(np.std(y)) or 1.0
    model = build_predictor(x.shape[1], float(np.mean(y)), std)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose)
    return model


def predict_accuracy(model, spec, archs):
    """Predicted accuracy of each sub-net in `archs` (float64 array); `spec` encodes them (a SuperSpec, or a
    JointSpace of several backbones)."""
    x = np.stack([encode(spec, a) if isinstance(spec, SuperSpec) else spec.encode(a) for a in archs])
    return np.asarray(model.predict_on_batch(x), np.float64).reshape(-1)
