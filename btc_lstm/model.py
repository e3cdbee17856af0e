"""The Keras LSTM: architecture, seeding, and saving to bytes for the database.

Importing this module imports TensorFlow, which takes seconds; commands that do not
train or forecast never import it.
"""

import os
import tempfile
from pathlib import Path

# TensorFlow's C++ log lines (oneDNN notices, and tf.data graph messages logged
# as errors though harmless) reach users as noise. Failures still raise in Python.
# Set TF_CPP_MIN_LOG_LEVEL=0 to see them all.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


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
) -> keras.Model:
    """Build and compile an LSTM from `(lookback, features)` to `horizon` outputs."""
    inputs = keras.Input(shape=(lookback, feature_count), name="candle_features")

    hidden = keras.layers.LSTM(lstm_units, name="lstm")(inputs)
    hidden = keras.layers.Dropout(dropout, name="dropout")(hidden)

    outputs = keras.layers.Dense(horizon, name="scaled_log_return_by_step")(hidden)

    model = keras.Model(inputs, outputs, name="btc_lstm")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse"
    )
    return model


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
