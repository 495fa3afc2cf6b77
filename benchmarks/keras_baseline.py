"""The Keras example's FCN-8s (VGG19), timed on this machine: the baseline for ``fcn-bench model``.

The issue quotes the keras.io example's speed measured on another CPU (inference 3.1 img/s,
frozen-backbone training 3.6 img/s, FCN-8s VGG19 224x224 batch 8). This script rebuilds that
model in Keras 3 / TensorFlow and times it here, so that our figures can be compared on the
same CPU, in the same session:

- VGG19 convolutional part (``keras.applications.VGG19``, ``weights=None``: the ImageNet
  weights cannot be downloaded offline and do not change the speed), frozen;
- fc6 as a 7x7 conv (4096, ReLU, no bias, ``padding="same"``) and fc7 as a 1x1 conv (4096,
  ReLU, no bias), each followed by dropout 0.5, frozen (the example's "dense convs");
- 1x1 score convs with ReLU on pool3, pool4 and fc7; pool5's scores upsampled 2x (bilinear)
  and added to pool4's, that upsampled 2x and added to pool3's, then upsampled 8x (bilinear);
  a final 1x1 conv with softmax (the example's FCN-8s head, its mistakes included: they cost
  next to nothing);
- compiled with AdamW and sparse categorical cross-entropy, as the example; training = one
  ``train_on_batch`` with only the head trainable.

TensorFlow is not a dependency of fcn_dist; run this in its own environment::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    /tmp/tfvenv/bin/python benchmarks/keras_baseline.py --json out/keras.json

Prints figures (images/s, best of ``--iters`` timed calls after ``--warmup``); never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def build_fcn8s(size: int, num_classes: int):
    """The Keras example's FCN-8s on a frozen VGG19 (see the module docstring)."""
    import keras

    vgg = keras.applications.VGG19(include_top=False, weights=None, input_shape=(size, size, 3))
    backbone = keras.Model(vgg.input, [vgg.get_layer(n).output
                                       for n in ("block3_pool", "block4_pool", "block5_pool")])
    backbone.trainable = False
    dense_convs = keras.Sequential([
        keras.layers.Conv2D(4096, 7, padding="same", activation="relu", use_bias=False),
        keras.layers.Dropout(0.5),
        keras.layers.Conv2D(4096, 1, padding="same", activation="relu", use_bias=False),
        keras.layers.Dropout(0.5),
    ])
    dense_convs.trainable = False

    inputs = keras.Input((size, size, 3))
    pool3, pool4, pool5 = backbone(inputs)
    fc7 = dense_convs(pool5)

    def score(x):
        return keras.layers.Conv2D(num_classes, 1, padding="same", activation="relu")(x)

    s5 = keras.layers.UpSampling2D(2, interpolation="bilinear")(score(fc7))
    s4 = keras.layers.UpSampling2D(2, interpolation="bilinear")(keras.layers.Add()([score(pool4), s5]))
    s3 = keras.layers.UpSampling2D(8, interpolation="bilinear")(keras.layers.Add()([score(pool3), s4]))
    outputs = keras.layers.Conv2D(num_classes, 1, padding="same", activation="softmax")(s3)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    return model


def _best(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--no-training", action="store_true")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import numpy as np
        import tensorflow as tf
    except ImportError:
        print("keras_baseline: TensorFlow is not installed in this environment; see the "
              "module docstring (python -m venv ... && pip install tensorflow-cpu)",
              file=sys.stderr)
        return 2
    import keras

    model = build_fcn8s(args.size, args.classes)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.random((args.batch, args.size, args.size, 3), dtype=np.float32))
    y = tf.constant(rng.integers(0, args.classes, (args.batch, args.size, args.size, 1)))

    predict = tf.function(lambda t: model(t, training=False), jit_compile=False)
    infer_s = _best(lambda: predict(x).numpy(), args.warmup, args.iters)
    out = {
        "framework": f"tensorflow {tf.__version__}, keras {keras.__version__}",
        "cpu": platform.processor() or platform.machine(),
        "threads": {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter": tf.config.threading.get_inter_op_parallelism_threads()},
        "size": args.size, "batch": args.batch,
        "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "inference_images_per_second": args.batch / infer_s,
    }
    if not args.no_training:
        train_s = _best(lambda: model.train_on_batch(x, y), args.warmup, args.iters)
        out["frozen_training_images_per_second"] = args.batch / train_s
    print(f"Keras example FCN-8s VGG19 {args.size}x{args.size} batch {args.batch} "
          f"({out['framework']})")
    print(f"  inference          {out['inference_images_per_second']:.2f} img/s")
    if "frozen_training_images_per_second" in out:
        print(f"  training (frozen)  {out['frozen_training_images_per_second']:.2f} img/s "
              f"({out['trainable_params']} trainable parameters)")
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
