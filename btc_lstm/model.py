"""The Keras LSTM: architecture, seeding, and saving to bytes for the database.

Importing this module imports TensorFlow, which takes seconds; commands that do not
train or forecast never import it.
"""

import os
import tempfile
from pathlib import Path
from typing import Any

# TensorFlow's C++ log lines (oneDNN notices, and tf.data graph messages logged
# as errors though harmless) reach users as noise. Failures still raise in Python.
# Set TF_CPP_MIN_LOG_LEVEL=0 to see them all.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from btc_lstm.features import Standardizer  # noqa: E402

# Each retrain of a backtest builds a new model, and TensorFlow warns about the
# retracing that this causes through its own logger. The warning is harmless here.
tf.get_logger().setLevel("ERROR")


def seed_everything(random_seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow ops deterministic.

    With the same data and seed, training on CPU then gives the same weights.
    """
    keras.utils.set_random_seed(random_seed)
    tf.config.experimental.enable_op_determinism()


def build_model(
    lookback: int,
    feature_count: int,
    horizon: int,
    lstm_units: int,
    dropout: float,
    learning_rate: float,
    lstm_layers: int = 1,
    bidirectional: bool = False,
) -> keras.Model:
    """Build and compile an LSTM from `(lookback, features)` to `horizon` outputs.

    With `lstm_layers` above one, each layer but the last passes its whole output
    sequence to the next. With `bidirectional`, each layer also reads the lookback
    backwards and the two readings are concatenated.
    """
    inputs = keras.Input(shape=(lookback, feature_count), name="candle_features")

    hidden = inputs
    for layer_number in range(1, lstm_layers + 1):
        layer = keras.layers.LSTM(
            lstm_units,
            return_sequences=layer_number < lstm_layers,
            name=f"lstm_{layer_number}",
        )
        if bidirectional:
            layer = keras.layers.Bidirectional(
                layer, name=f"bidirectional_{layer_number}"
            )
        hidden = layer(hidden)
        hidden = keras.layers.Dropout(dropout, name=f"dropout_{layer_number}")(hidden)

    outputs = keras.layers.Dense(horizon, name="scaled_log_return_by_step")(hidden)

    model = keras.Model(inputs, outputs, name="btc_lstm")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse"
    )
    return model


def predict_log_returns(
    model: keras.Model, preprocessing: dict[str, Any], inputs: np.ndarray
) -> np.ndarray:
    """Return the log returns a model predicts from unscaled input windows.

    Args:
        preprocessing: the scalers fitted with the model, as stored in `model_runs`.
        inputs: features of shape `(samples, lookback, features)`.

    Returns:
        Log returns from each sample's last close, shape `(samples, horizon)`.
    """
    input_scaler = Standardizer.from_dict(preprocessing["input_scaler"])
    target_scaler = Standardizer.from_dict(preprocessing["target_scaler"])
    scaled = model.predict(input_scaler.transform(inputs), verbose=0)
    log_returns: np.ndarray = target_scaler.inverse_transform(scaled)
    return log_returns


def model_to_bytes(model: keras.Model) -> bytes:
    """Return the model as the bytes of a native `.keras` archive."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


def model_from_bytes(archive: bytes) -> keras.Model:
    """Load a model saved by `model_to_bytes`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        path.write_bytes(archive)
        return keras.saving.load_model(path)


KERAS_VERSION: str = keras.__version__
