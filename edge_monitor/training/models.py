"""Keras builders for the unsupervised detectors. TensorFlow is imported inside each function.

Every builder takes the window shape ``(frames, n_features)`` and returns a model
whose input is ``(batch, frames, n_features)`` float32 (normalised log-mel), so the
int8 export has the ``[1, frames, n_features]`` input the runtime feeds it.

* :func:`dense_autoencoder`: the DCASE 2020 Task 2 baseline shape (stacked frames,
  dense 128-128-128-8-128-128-128), output = reconstruction of the input.
* :func:`conv_autoencoder`: strided convolutions down, upsampling + convolutions up.
* :func:`stats_embedding`: per-band mean and standard deviation over the window,
  then a fixed affine map (whitening fitted on the normal data). No training.
* :func:`cnn_classifier`: a small CNN trained to tell the machine's normal windows
  from synthetic spectral faults (outlier exposure); its penultimate layer is the
  embedding that the runtime scores with a Mahalanobis distance.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np


def dense_autoencoder(frames: int, n_features: int, *, hidden: int = 128, bottleneck: int = 8,
                      batch_size: Optional[int] = None) -> Any:
    """DCASE 2020 baseline autoencoder on the flattened window ``frames * n_features``."""
    import keras
    from keras import layers

    inp = keras.Input(shape=(frames, n_features), batch_size=batch_size)
    x = layers.Flatten()(inp)
    for width in (hidden, hidden, hidden, bottleneck, hidden, hidden, hidden):
        x = layers.Dense(width)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Dense(frames * n_features)(x)
    out = layers.Reshape((frames, n_features))(x)
    return keras.Model(inp, out, name="dense_autoencoder")


def conv_autoencoder(frames: int, n_features: int, *, channels: tuple[int, ...] = (16, 32, 48),
                     bottleneck: int = 32, batch_size: Optional[int] = None) -> Any:
    """Convolutional autoencoder on a log-mel patch; frames and n_features must be divisible by 2**len(channels)."""
    import keras
    from keras import layers

    factor = 2 ** len(channels)
    if frames % factor or n_features % factor:
        raise ValueError(f"conv autoencoder needs frames and features divisible by {factor}, "
                         f"got {frames} x {n_features}")
    inp = keras.Input(shape=(frames, n_features), batch_size=batch_size)
    x = layers.Reshape((frames, n_features, 1))(inp)
    for ch in channels:
        x = layers.Conv2D(ch, 3, strides=2, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    small = (frames // factor, n_features // factor, channels[-1])
    x = layers.Flatten()(x)
    x = layers.Dense(bottleneck)(x)
    x = layers.ReLU()(x)
    x = layers.Dense(int(np.prod(small)))(x)
    x = layers.ReLU()(x)
    x = layers.Reshape(small)(x)
    for ch in reversed(channels):
        x = layers.UpSampling2D(2)(x)
        x = layers.Conv2D(ch, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Conv2D(1, 3, padding="same")(x)
    out = layers.Reshape((frames, n_features))(x)
    return keras.Model(inp, out, name="conv_autoencoder")


class _MeanStd:
    """Namespace for the pooling layer, built lazily so importing this module needs no Keras."""

    cls: Any = None


def _mean_std_layer() -> Any:
    if _MeanStd.cls is None:
        import keras

        class MeanStdPool(keras.layers.Layer):
            """Per-feature mean and standard deviation over the time axis: (b, t, f) -> (b, 2f)."""

            def call(self, x: Any) -> Any:
                mean = keras.ops.mean(x, axis=1)
                centred = x - keras.ops.expand_dims(mean, 1)
                std = keras.ops.sqrt(keras.ops.mean(centred * centred, axis=1) + 1e-4)
                return keras.ops.concatenate([mean, std], axis=-1)

        _MeanStd.cls = MeanStdPool
    return _MeanStd.cls()


def mean_std_pool(windows: np.ndarray) -> np.ndarray:
    """Numpy twin of the pooling layer: ``(n, t, f)`` -> ``(n, 2f)`` float64."""
    x = np.asarray(windows, dtype=np.float64)
    mean = x.mean(axis=1)
    std = np.sqrt(((x - mean[:, None, :]) ** 2).mean(axis=1) + 1e-4)
    return np.concatenate([mean, std], axis=1)


def stats_embedding(frames: int, n_features: int, weights: np.ndarray, bias: np.ndarray, *,
                    batch_size: Optional[int] = None) -> Any:
    """Mean/std pooling followed by the fixed affine map ``y = pooled @ weights + bias`` (``weights`` (2f, d))."""
    import keras
    from keras import layers

    inp = keras.Input(shape=(frames, n_features), batch_size=batch_size)
    pooled = _mean_std_layer()(inp)
    dense = layers.Dense(weights.shape[1], name="whiten")
    out = dense(pooled)
    dense.set_weights([np.asarray(weights, np.float32), np.asarray(bias, np.float32)])
    return keras.Model(inp, out, name="stats_embedding")


def frame_whitener(frames: int, n_features: int, weights: np.ndarray, bias: np.ndarray, *,
                   batch_size: Optional[int] = None) -> Any:
    """The same affine map on every frame: ``(b, t, f) -> (b, t, d)``, ``y_t = x_t @ weights + bias``.

    Only FULLY_CONNECTED: no op that an older TFLite runtime lacks.
    """
    import keras
    from keras import layers

    inp = keras.Input(shape=(frames, n_features), batch_size=batch_size)
    dense = layers.Dense(weights.shape[1], name="whiten")
    out = dense(inp)
    dense.set_weights([np.asarray(weights, np.float32), np.asarray(bias, np.float32)])
    return keras.Model(inp, out, name="frame_whitener")


def cnn_classifier(frames: int, n_features: int, n_classes: int, *, embedding_dim: int = 16,
                   channels: tuple[int, ...] = (16, 32, 32), batch_size: Optional[int] = None) -> tuple[Any, Any]:
    """``(classifier, embedder)`` sharing layers: the classifier trains, the embedder (penultimate layer) ships."""
    import keras
    from keras import layers

    inp = keras.Input(shape=(frames, n_features), batch_size=batch_size)
    x = layers.Reshape((frames, n_features, 1))(inp)
    for ch in channels:
        x = layers.Conv2D(ch, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    emb = layers.Dense(embedding_dim, name="embedding")(x)
    logits = layers.Dense(n_classes, name="logits")(layers.ReLU()(emb))
    return keras.Model(inp, logits, name="oe_classifier"), keras.Model(inp, emb, name="oe_embedding")
