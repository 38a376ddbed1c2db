"""The network's forward pass: the candidates for making it faster, side by side.

Every candidate runs the shipped model (band calibration off) on the same inputs, the fast
path's own tensors for simulated servers with a full day of history, one after the other in
this process, so the ratios are taken under one load. Each is compared with the eager forward
at the service's former batch size (256): the ratio, and the largest difference of the
forecasts relative to the target's scale (the fast path's tolerance is 1e-4).
- eager at several batch sizes: the forward is bound by memory traffic of element-wise
  operations over (series, 384 steps, variables, hidden) tensors, not by per-operation
  overhead, so smaller batches that stay in cache are faster;
- a static-shape forward (`StaticForward`, the same submodules with the data-dependent steps,
  `int(lengths.max())`, packed LSTM sequences and length masks, written for windows whose
  encoder is full), eager: it must give the same numbers;
- that static graph exported with `torch.onnx.export(dynamo=True)` and run on ONNX Runtime
  (only when `onnxruntime` and `onnxscript` are installed; they are not dependencies);
- `torch.compile` (inductor) of the library's forward: compile time, then the ratio.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import Context, figure, load
from bench.inference import _quiet, compare, history_arrays, load_model, make_batch

NAME = "forward"
TITLE = "Forward pass: candidates for a faster network call"
SERVERS = 1_000
QUICK_SERVERS = 8
BATCH_SIZES = (16, 64, 256, 1024)
QUICK_BATCH_SIZES = (4, 8)
REFERENCE_BATCH = 256
DECISION = (
    "Decision: the service keeps the eager forward (the reference) at "
    "`forecaster.model.config.FORWARD_BATCH_SIZE` (64), the one change that costs nothing. "
    "No candidate reaches 3x: ONNX Runtime would add a runtime dependency and a second graph "
    "to keep equal to the library's for 1.1-1.3x; torch.compile gains about 1.4-1.5x but "
    "compiles for over a minute on every model load and breaks its graph on the "
    "data-dependent encoder lengths; the static-shape forward holds only for full encoders. "
    "The forward is memory-bound, so the next step is less work per series (a smaller "
    "hidden size or a shorter encoder, decided in the backtest), not a faster runtime."
)
COMPILE_SERVERS = 256  # torch.compile: fewer series, its compile time dominates anyway


class StaticForward(torch.nn.Module):
    """The TFT's forward for windows whose encoder is full (every encoder length equals the
    encoder tensor's width), with no data-dependent shape: plain LSTMs instead of packed
    sequences (packing is the identity when every length is the width), the attention mask
    built from the shapes. Only the forecasts and the encoder variable weights come out."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, encoder_cont, decoder_cont, encoder_cat, decoder_cat, target_scale):
        m = self.model
        width, horizon = encoder_cont.size(1), decoder_cont.size(1)
        x_cat = torch.cat([encoder_cat, decoder_cat], dim=1)
        x_cont = torch.cat([encoder_cont, decoder_cont], dim=1)
        steps = x_cont.size(1)
        vectors = m.input_embeddings(x_cat)
        vectors.update(
            {
                name: x_cont[..., i].unsqueeze(-1)
                for i, name in enumerate(m.hparams.x_reals)
                if name in m.reals
            }
        )
        static, _ = m.static_variable_selection(
            {name: vectors[name][:, 0] for name in m.static_variables}
        )
        context = m.expand_static_context(m.static_context_variable_selection(static), steps)
        encoder, encoder_weights = m.encoder_variable_selection(
            {name: vectors[name][:, :width] for name in m.encoder_variables}, context[:, :width]
        )
        decoder, _ = m.decoder_variable_selection(
            {name: vectors[name][:, width:] for name in m.decoder_variables}, context[:, width:]
        )
        layers = m.hparams.lstm_layers
        hidden = m.static_context_initial_hidden_lstm(static).expand(layers, -1, -1).contiguous()
        cell = m.static_context_initial_cell_lstm(static).expand(layers, -1, -1).contiguous()
        encoded, state = torch.nn.LSTM.forward(m.lstm_encoder, encoder, (hidden, cell))
        decoded, _ = torch.nn.LSTM.forward(m.lstm_decoder, decoder, state)
        lstm = torch.cat(
            [
                m.post_lstm_add_norm_encoder(m.post_lstm_gate_encoder(encoded), encoder),
                m.post_lstm_add_norm_decoder(m.post_lstm_gate_decoder(decoded), decoder),
            ],
            dim=1,
        )
        enrichment = m.expand_static_context(m.static_context_enrichment(static), steps)
        attention_input = m.static_enrichment(lstm, enrichment)
        step = torch.arange(horizon, device=encoder_cont.device)
        if m.hparams.causal_attention:  # do not attend to self or later decoder steps
            decoder_mask = step[None, :] >= step[:, None]
        else:
            decoder_mask = torch.zeros(horizon, horizon, dtype=torch.bool)
        encoder_mask = torch.zeros(horizon, width, dtype=torch.bool, device=encoder_cont.device)
        mask = torch.cat([encoder_mask, decoder_mask], dim=1)
        mask = mask.unsqueeze(0).expand(encoder_cont.size(0), -1, -1)
        attended, _ = m.multihead_attn(
            q=attention_input[:, width:], k=attention_input, v=attention_input, mask=mask
        )
        attended = m.post_attn_gate_norm(attended, attention_input[:, width:])
        output = m.pre_output_gate_norm(m.pos_wise_ff(attended), lstm[:, width:])
        output = [layer(output) for layer in m.output_layer]
        prediction = m.transform_output(output, target_scale=list(target_scale.unbind(0)))
        return torch.stack(list(prediction), dim=2), encoder_weights


def _static_args(x: dict) -> tuple:
    return (
        x["encoder_cont"],
        x["decoder_cont"],
        x["encoder_cat"].contiguous(),
        x["decoder_cat"].contiguous(),
        torch.stack(x["target_scale"]),
    )


def _inputs(predictor: Any, data: dict, size: int) -> list[dict]:
    batch = make_batch(data)
    n = len(data["instances"])
    return [predictor.inputs(batch, slice(lo, lo + size)) for lo in range(0, n, size)]


def _timed(call, inputs: list, repeat: int = 2) -> tuple[float, np.ndarray]:
    """Best of `repeat` passes over `inputs` (after one warm-up call) and the forecasts."""
    with torch.inference_mode():
        call(inputs[0])
        best, outputs = float("inf"), []
        for _ in range(repeat):
            started = time.perf_counter()
            outputs = [np.asarray(call(x), dtype=np.float64) for x in inputs]
            best = min(best, time.perf_counter() - started)
    return best, np.concatenate(outputs, axis=0)


def _eager(model: Any):
    return lambda x: torch.stack(list(model(x)["prediction"]), dim=2).numpy()


def _onnx_runtime(static: Any, inputs: list, work: Path) -> dict[str, Any]:
    """The static graph on ONNX Runtime, one intra-op thread, all graph optimisations."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
    except ImportError as exc:
        return {"skipped": f"not installed ({exc.name})"}
    batch = torch.export.Dim("batch", min=1, max=65_536)
    names = ["encoder_cont", "decoder_cont", "encoder_cat", "decoder_cat", "target_scale"]
    path = work / "tft-static.onnx"
    started = time.perf_counter()
    torch.onnx.export(
        static,
        _static_args(inputs[0]),
        str(path),
        dynamo=True,
        optimize=True,
        input_names=names,
        output_names=["prediction", "encoder_weights"],
        dynamic_shapes=({0: batch}, {0: batch}, {0: batch}, {0: batch}, {1: batch}),
    )
    export_s = time.perf_counter() - started
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = [dict(zip(names, (a.numpy() for a in _static_args(x)), strict=True)) for x in inputs]
    indexed = dict(enumerate(feeds))
    seconds, forecasts = _timed(lambda i: session.run(None, indexed[i])[0], list(indexed))
    return {"seconds": seconds, "forecasts": forecasts, "export_s": export_s}


def _compiled(model: Any, inputs: list) -> dict[str, Any]:
    """`torch.compile` (inductor, static shapes) of the library's forward."""
    compiled = torch.compile(model, dynamic=False)
    started = time.perf_counter()
    with torch.inference_mode():
        compiled(inputs[0])
    compile_s = time.perf_counter() - started
    seconds, forecasts = _timed(_eager(compiled), inputs)
    return {"seconds": seconds, "forecasts": forecasts, "compile_s": compile_s}


def run(ctx: Context) -> dict[str, Any]:
    """Every candidate on the same series; ratios against eager at the reference batch."""
    _quiet()
    from forecaster.model.fast import FastPredictor

    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    version, bundle = load_model(ctx.repo / "models")
    bundle = dataclasses.replace(bundle, calibration=None)
    servers = QUICK_SERVERS if ctx.quick else SERVERS
    sizes = QUICK_BATCH_SIZES if ctx.quick else BATCH_SIZES
    reference_size = sizes[-1] if ctx.quick else REFERENCE_BATCH
    data = history_arrays(servers, bundle.config)
    predictor = FastPredictor(bundle)
    model = predictor.model
    rows: list[dict[str, Any]] = []
    eager = {}
    for size in sizes:
        eager[size] = _timed(_eager(model), _inputs(predictor, data, size))
    reference_s, reference = eager[reference_size]
    for size in sizes:
        seconds, forecasts = eager[size]
        rows.append(_row(f"eager, batch {size}", seconds, forecasts, reference, reference_s))
    best_size = min(sizes, key=lambda s: eager[s][0])
    inputs = _inputs(predictor, data, best_size)
    static = StaticForward(model).eval()
    seconds, forecasts = _timed(lambda x: static(*_static_args(x))[0].numpy(), inputs)
    rows.append(
        _row(f"static-shape forward, batch {best_size}", seconds, forecasts, reference, reference_s)
    )
    notes = []
    if not ctx.quick:
        with tempfile.TemporaryDirectory(prefix="bench-onnx-", dir=ctx.work) as work:
            ort = _onnx_runtime(static, inputs, Path(work))
        if "skipped" in ort:
            notes.append(f"ONNX Runtime: {ort['skipped']}")
        else:
            label = (
                f"ONNX Runtime, static graph, batch {best_size} (export {ort['export_s']:.0f} s)"
            )
            rows.append(_row(label, ort["seconds"], ort["forecasts"], reference, reference_s))
        part = data | {
            key: data[key][:COMPILE_SERVERS]
            for key in ("instances", "profiles", "targets", "covariates")
        }
        small = _inputs(predictor, part, best_size)
        base_s, base = _timed(_eager(model), small)
        comp = _compiled(model, small)
        rows.append(
            _row(
                f"torch.compile (inductor), batch {best_size}, {COMPILE_SERVERS} servers "
                f"(compile {comp['compile_s']:.0f} s; ratio against eager at batch {best_size})",
                comp["seconds"],
                comp["forecasts"],
                base,
                base_s,
            )
        )
    figures = [
        figure(
            f"{servers:,} servers, {row['candidate']}: {row['seconds']:.3f} s",
            row["ratio"],
            "x",
            goal_op=">=",
            goal_value=3.0,
            digits=2,
            note=f"max difference {row['max_rel_diff']:.1e} of the target's scale",
            at_load=row["load"],
        )
        for row in rows
    ]
    return {
        "figures": figures,
        "rows": rows,
        "servers": servers,
        "reference_batch": reference_size,
        "best_batch": best_size,
        "model": version,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "notes": [
            f"Ratios: eager forward at batch {reference_size} / the candidate, the same "
            "inputs; goal 3x with a difference at most 1e-4 of the target's scale.",
            *notes,
            DECISION,
        ],
    }


def _row(candidate: str, seconds: float, forecasts, reference, reference_s: float) -> dict:
    return {
        "candidate": candidate,
        "seconds": seconds,
        "ratio": reference_s / seconds,
        "max_rel_diff": compare(forecasts, reference)["max_rel_diff"],
        "load": load(),
    }
