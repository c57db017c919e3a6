#!/usr/bin/env python3
"""Train the greenhouse climate autoencoder and write what Weir's inference stage loads.

Writes (commit all three; tests never need TensorFlow):
  models/greenhouse-ae.tflite     a 32 -> 8 (relu) -> 32 dense autoencoder, float32, two
                                  FULLY_CONNECTED ops (version 1: TF Lite 1.15 loads it)
  models/greenhouse-ae.norm.json  the normalisation sidecar: inputs, per-input mean/std, window
  models/greenhouse-ae.vectors.json  recorded windows and the reference interpreter's outputs
                                  (ai-edge-litert), for tests/inference.rs

The model is written straight into the TF Lite flatbuffer schema (PyPI `tflite` has the generated
builders): the "light route" in ../shared/PEERS.md, no TensorFlow. Its window is 8 samples at a
60 s period of 4 inputs of one greenhouse: climate temperature, humidity, light and the vent state.

Training data: normal days of the simulator's greenhouse (the formulas of crates/weir-sim, see its
module doc) with the greenhouse example's vent rule (open above 26 °C, closed below 24 °C).
Evaluation: scripts/train-anomaly/evaluate.py on the injected faults.

Run: scripts/train-anomaly/run (makes the venv target/infer-venv).
"""
import json
import math
import pathlib
import sys

import flatbuffers
import numpy as np
import tflite  # the schema's generated builders

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from greenhouse import INPUTS, PERIOD_S, WINDOW, simulate, windows  # noqa: E402

HIDDEN = 8
FC = 9  # BuiltinOperator.FULLY_CONNECTED
FLOAT32 = 0  # TensorType.FLOAT32


def train(x, seed=1, steps=4000, lr=3e-3):
    """A 32-8-32 autoencoder by full-batch Adam on the mean squared error."""
    rng = np.random.default_rng(seed)
    n = x.shape[1]
    p = {
        "w1": rng.normal(0, 1 / math.sqrt(n), (HIDDEN, n)),
        "b1": np.zeros(HIDDEN),
        "w2": rng.normal(0, 1 / math.sqrt(HIDDEN), (n, HIDDEN)),
        "b2": np.zeros(n),
    }
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    for t in range(1, steps + 1):
        h_pre = x @ p["w1"].T + p["b1"]
        h = np.maximum(h_pre, 0)
        y = h @ p["w2"].T + p["b2"]
        d = 2 * (y - x) / x.size
        g = {"w2": d.T @ h, "b2": d.sum(0)}
        dh = (d @ p["w2"]) * (h_pre > 0)
        g["w1"] = dh.T @ x
        g["b1"] = dh.sum(0)
        for k in p:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
            p[k] -= lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
    return {k: val.astype(np.float32) for k, val in p.items()}


def write_tflite(p, path, fc_version=1):
    """The model as a TF Lite flatbuffer (schema version 3)."""
    n = p["w1"].shape[1]
    b = flatbuffers.Builder(4096)

    def vec_i32(start, xs):
        start(b, len(xs))
        for x in reversed(xs):
            b.PrependInt32(x)
        return b.EndVector()

    def buffer(arr):
        if arr is None:
            tflite.BufferStart(b)
            return tflite.BufferEnd(b)
        raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        data = b.CreateByteVector(raw)
        tflite.BufferStart(b)
        tflite.BufferAddData(b, data)
        return tflite.BufferEnd(b)

    # Buffer 0 is the empty buffer by convention; activations use it.
    bufs = [buffer(None), buffer(p["w1"]), buffer(p["b1"]), buffer(p["w2"]), buffer(p["b2"])]
    tensors_spec = [  # name, shape, buffer
        ("window", [1, n], 0),
        ("enc/weights", [HIDDEN, n], 1),
        ("enc/bias", [HIDDEN], 2),
        ("code", [1, HIDDEN], 0),
        ("dec/weights", [n, HIDDEN], 3),
        ("dec/bias", [n], 4),
        ("reconstruction", [1, n], 0),
    ]
    tensors = []
    for name, shape, buf in tensors_spec:
        nm = b.CreateString(name)
        sh = vec_i32(tflite.TensorStartShapeVector, shape)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, sh)
        tflite.TensorAddType(b, FLOAT32)
        tflite.TensorAddBuffer(b, buf)
        tflite.TensorAddName(b, nm)
        tensors.append(tflite.TensorEnd(b))

    def fc(inputs, outputs, act):
        tflite.FullyConnectedOptionsStart(b)
        tflite.FullyConnectedOptionsAddFusedActivationFunction(b, act)
        opts = tflite.FullyConnectedOptionsEnd(b)
        ins = vec_i32(tflite.OperatorStartInputsVector, inputs)
        outs = vec_i32(tflite.OperatorStartOutputsVector, outputs)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, 0)
        tflite.OperatorAddInputs(b, ins)
        tflite.OperatorAddOutputs(b, outs)
        tflite.OperatorAddBuiltinOptionsType(b, tflite.BuiltinOptions.FullyConnectedOptions)
        tflite.OperatorAddBuiltinOptions(b, opts)
        return tflite.OperatorEnd(b)

    ops = [fc([0, 1, 2], [3], tflite.ActivationFunctionType.RELU),
           fc([3, 4, 5], [6], tflite.ActivationFunctionType.NONE)]

    tflite.SubGraphStartTensorsVector(b, len(tensors))
    for t in reversed(tensors):
        b.PrependUOffsetTRelative(t)
    tv = b.EndVector()
    iv = vec_i32(tflite.SubGraphStartInputsVector, [0])
    ov = vec_i32(tflite.SubGraphStartOutputsVector, [6])
    tflite.SubGraphStartOperatorsVector(b, len(ops))
    for o in reversed(ops):
        b.PrependUOffsetTRelative(o)
    opv = b.EndVector()
    sg_name = b.CreateString("main")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tv)
    tflite.SubGraphAddInputs(b, iv)
    tflite.SubGraphAddOutputs(b, ov)
    tflite.SubGraphAddOperators(b, opv)
    tflite.SubGraphAddName(b, sg_name)
    sg = tflite.SubGraphEnd(b)

    # TF Lite 1.15 reads the int8 `builtin_code` (now `deprecated_builtin_code`); newer readers
    # take the larger of it and the int32 field added later.
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, FC)
    tflite.OperatorCodeAddBuiltinCode(b, FC)
    tflite.OperatorCodeAddVersion(b, fc_version)
    oc = tflite.OperatorCodeEnd(b)

    tflite.ModelStartOperatorCodesVector(b, 1)
    b.PrependUOffsetTRelative(oc)
    ocv = b.EndVector()
    tflite.ModelStartSubgraphsVector(b, 1)
    b.PrependUOffsetTRelative(sg)
    sgv = b.EndVector()
    tflite.ModelStartBuffersVector(b, len(bufs))
    for x in reversed(bufs):
        b.PrependUOffsetTRelative(x)
    bv = b.EndVector()
    desc = b.CreateString("weir greenhouse climate autoencoder (scripts/train-anomaly)")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, ocv)
    tflite.ModelAddSubgraphs(b, sgv)
    tflite.ModelAddDescription(b, desc)
    tflite.ModelAddBuffers(b, bv)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))


def reference_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the older package name
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it


def main():
    out = ROOT / "models"
    out.mkdir(exist_ok=True)
    days = [simulate(days=1, seed=s, start_day=s) for s in range(14)]
    raw = np.concatenate([windows(d) for d in days])
    flat = raw.reshape(len(raw), WINDOW, len(INPUTS))
    mean = flat.reshape(-1, len(INPUTS)).mean(0)
    std = flat.reshape(-1, len(INPUTS)).std(0) + 1e-6
    x = ((flat - mean) / std).reshape(len(raw), -1).astype(np.float32)
    p = train(x)
    model = out / "greenhouse-ae.tflite"
    write_tflite(p, model)
    sidecar = {
        "inputs": INPUTS,
        "window_samples": WINDOW,
        "period_s": PERIOD_S,
        "layout": "sample-major: [s0.in0, s0.in1, ..., s1.in0, ...]",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }
    # For tests/inference.rs: the same model asking for FULLY_CONNECTED version 12, which TF Lite
    # 1.15 does not have (`weir check` must name the op and version).
    write_tflite(p, ROOT / "tests" / "data" / "fc-v12.tflite", fc_version=12)
    (out / "greenhouse-ae.norm.json").write_text(json.dumps(sidecar, indent=2) + "\n")

    it = reference_interpreter(model)
    inp = it.get_input_details()[0]["index"]
    outp = it.get_output_details()[0]["index"]
    rng = np.random.default_rng(7)
    picks = rng.choice(len(x), 24, replace=False)
    vectors = []
    for i in picks:
        w = x[i : i + 1]
        it.set_tensor(inp, w)
        it.invoke()
        vectors.append({"input": [float(v) for v in w[0]], "output": [float(v) for v in it.get_tensor(outp)[0]]})
    # A few windows far from normal too (the fault side of the score).
    for scale in (3.0, -4.0):
        w = (x[picks[0] : picks[0] + 1] * scale).astype(np.float32)
        it.set_tensor(inp, w)
        it.invoke()
        vectors.append({"input": [float(v) for v in w[0]], "output": [float(v) for v in it.get_tensor(outp)[0]]})
    (out / "greenhouse-ae.vectors.json").write_text(json.dumps({
        "model": "greenhouse-ae.tflite",
        "reference": "ai-edge-litert Interpreter",
        "windows": vectors,
    }) + "\n")
    err = ((np.stack([v["output"] for v in vectors[:24]]) - np.stack([v["input"] for v in vectors[:24]])) ** 2).mean(1)
    print(f"wrote {model} ({model.stat().st_size} bytes); normal-window MSE median {np.median(err):.4f}")


if __name__ == "__main__":
    main()
