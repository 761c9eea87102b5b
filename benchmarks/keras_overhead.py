"""Step-time overhead of ``ModulatedModel.train_step`` versus Keras's stock ``train_step`` (CPU).

For a two-modality CNN and a two-modality small transformer, the same architecture is compiled three
ways: a plain ``keras.Model`` (stock step), ``ModulatedModel`` in ``grad`` mode and in ``lr`` mode
(PDMP, after warm-up so the coefficients are active). Each round times ``--steps`` calls of every
variant's compiled train function on a fixed batch, the variants in a fresh random order per round
(interleaved, so drift in machine load hits all alike). The ratio is the median over rounds of
``pdmp_time / stock_time`` measured in the same round. Prints a table and writes JSON.

    python benchmarks/keras_overhead.py --rounds 15 --steps 10 --out benchmarks/results/keras_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="train steps per variant per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="TF intra/inter-op threads (0: TF default)")
    parser.add_argument("--jit", action="store_true", help="compile the steps with XLA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/keras_overhead.json")
    return parser.parse_args()


def main() -> None:
    args = parse()
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras
    import numpy as np

    from pdmp import PDMP
    from pdmp.backends.keras import ModulatedModel

    rng = np.random.default_rng(args.seed)
    batch = args.batch_size

    def fuse(encoders: dict[str, keras.Model], shape: tuple[int, ...], dtype: str) -> keras.Model:
        inputs = {name: keras.Input(shape, dtype=dtype, name=name) for name in encoders}
        features = keras.layers.Concatenate()([encoders[name](inputs[name]) for name in encoders])
        return keras.Model(inputs, keras.layers.Dense(10, name="head")(features))

    def cnn_encoder(name: str) -> keras.Model:
        x = inputs = keras.Input((32, 32, 3))
        for width in (16, 32):
            x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name=f"{name}_enc")

    def transformer_encoder(name: str) -> keras.Model:
        inputs = keras.Input((32,), dtype="int32")
        h = keras.layers.Embedding(1000, 64)(inputs)
        h = keras.layers.LayerNormalization()(h + keras.layers.MultiHeadAttention(num_heads=4, key_dim=16)(h, h))
        h = keras.layers.LayerNormalization()(h + keras.layers.Dense(64)(keras.layers.Dense(128, activation="gelu")(h)))
        return keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h), name=f"{name}_enc")

    def cnn() -> tuple[keras.Model, dict[str, np.ndarray]]:
        model = fuse({name: cnn_encoder(name) for name in ("audio", "visual")}, (32, 32, 3), "float32")
        return model, {name: rng.normal(size=(batch, 32, 32, 3)).astype("float32") for name in ("audio", "visual")}

    def transformer() -> tuple[keras.Model, dict[str, np.ndarray]]:
        model = fuse({name: transformer_encoder(name) for name in ("audio", "visual")}, (32,), "int32")
        return model, {name: rng.integers(0, 1000, size=(batch, 32)).astype("int32") for name in ("audio", "visual")}

    labels = rng.integers(0, 10, batch)
    results: dict[str, Any] = {
        "config": {**vars(args), "tensorflow": tf.__version__, "keras": keras.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "models": {},
    }
    for label, builder in (("cnn", cnn), ("transformer", transformer)):
        variants: dict[str, keras.Model] = {}
        # grad mode is compared with the stock step on SGD, lr mode with the stock step on Adam.
        sgd, adam = (lambda: keras.optimizers.SGD(1e-3, momentum=0.9)), (lambda: keras.optimizers.Adam(1e-4))
        optimizers = {"stock": sgd, "pdmp_grad": sgd, "stock_adam": adam, "pdmp_lr": adam}
        for variant in optimizers:
            keras.utils.set_random_seed(args.seed)
            model, data = builder()
            if variant.startswith("pdmp"):
                modalities = {name: f"{name}_enc" for name in ("audio", "visual")}
                policy = PDMP(["audio", "visual"], "audio", gamma_p=10.0, gamma_r=0.5)
                model = ModulatedModel(model, modalities, policy, mode=variant.split("_")[1])
            model.compile(
                optimizer=optimizers[variant](),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=args.jit,
            )
            variants[variant] = model
        dataset = tf.data.Dataset.from_tensors((data, labels)).repeat()
        functions = {}
        for name, model in variants.items():
            model.make_train_function()
            iterator = iter(dataset)
            functions[name] = (model.train_function, iterator)
            for _ in range(3):  # trace + warm up
                float(model.train_function(iterator)["loss"])

        times: dict[str, list[float]] = {name: [] for name in variants}
        order = list(variants)
        shuffler = np.random.default_rng(args.seed + 1)
        for _ in range(args.rounds):
            shuffler.shuffle(order)
            for name in order:
                function, iterator = functions[name]
                start = time.perf_counter()
                for _ in range(args.steps):
                    logs = function(iterator)
                float(logs["loss"])
                times[name].append((time.perf_counter() - start) / args.steps)
        grad_ratios = [p / s for p, s in zip(times["pdmp_grad"], times["stock"], strict=True)]
        lr_ratios = [p / s for p, s in zip(times["pdmp_lr"], times["stock_adam"], strict=True)]
        entry = {
            "median_step_ms": {name: 1e3 * statistics.median(values) for name, values in times.items()},
            "ratio_grad_vs_stock_sgd": statistics.median(grad_ratios),
            "ratio_lr_vs_stock_adam": statistics.median(lr_ratios),
            "ratio_grad_per_round": grad_ratios,
            "ratio_lr_per_round": lr_ratios,
            "parameters": int(variants["stock"].count_params()),
        }
        results["models"][label] = entry
        ms = entry["median_step_ms"]
        print(
            f"{label:12s} stock(SGD) {ms['stock']:7.2f} ms  pdmp grad {ms['pdmp_grad']:7.2f} ms  "
            f"ratio {entry['ratio_grad_vs_stock_sgd']:.4f} | stock(Adam) {ms['stock_adam']:7.2f} ms  "
            f"pdmp lr {ms['pdmp_lr']:7.2f} ms  ratio {entry['ratio_lr_vs_stock_adam']:.4f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
