"""Inference speed: vggdet vs torchvision's FasterRCNN built from the same VGG16 parts and weights.

    python benchmarks/bench_infer.py [--threads 2] [--runs 5] [--batch 1 4] [--device cpu|cuda] [--amp]
                                     [--variants vggdet,torchvision,vggdet-plain,vggdet-cl,torchvision-cl,vggdet-bf16]
    python benchmarks/bench_infer.py --layers     # per 3x3 conv: each CPU kernel, fp32 and bf16 (CPU)

One process, one set of weights copied into both models, the same 500x375 images (-> 600x800), eval
mode and torch.inference_mode. The variants are timed interleaved (the order alternates per run) so
a noisy, shared machine slows them alike; the table gives the median seconds per image after a
warm-up. Peak RSS (CPU) comes from a fresh subprocess per variant; peak GPU memory from
torch.cuda.max_memory_allocated. Variants:
  vggdet          the package as shipped in fp32 (CPU: channels_last + the CPU kernels of
                  vggdet/model/cpu_kernels.py, each conv's chosen by the timing cache; prepacked fc6/fc7)
  vggdet-plain    vggdet forced to NCHW fp32 plain PyTorch ops (the reference "plain path")
  vggdet-cl       vggdet with channels_last but without the CPU kernels (runtime.winograd = False)
  vggdet-bf16     vggdet under bf16 autocast with its bf16 CPU kernels: what runtime.precision=auto runs on
                  a CPU with avx512_bf16 / AMX (an accuracy trade-off, reported separately)
  torchvision     torchvision FasterRCNN twin (see benchmarks/common.py), as a user would build it
  torchvision-cl  the twin with its input converted to channels_last (what torchvision could get)
  vgg19           vggdet as shipped with model.backbone.depth=19 (its own random weights), to time
                  VGG19 against VGG16 in the same run
  onnxruntime     the same weights exported by vggdet/export.py (float32 input) and run by onnxruntime
                  with --threads intra-op threads (CUDA execution provider with --device cuda)
  openvino        the same export run by OpenVINO on the CPU (INFERENCE_NUM_THREADS = --threads, f32)
  onnxruntime-int8, openvino-int8
                  that export quantized by vggdet/quantize.py (int8 convs and fc6/fc7, calibrated on 8
                  images like the benchmark's), run by each runtime
  onnxruntime-int8-svd, openvino-int8-svd
                  the same with fc6/fc7 first factored by truncated SVD to ranks 1024/256 (--svd 1024,256)
--amp runs every variant under autocast (fp16 on CUDA, bf16 on CPU).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import autocast, jpeg_like_images, machine, median, peak_rss_mib, timed, torchvision_twin  # noqa: E402

from vggdet import build_detector, load_config  # noqa: E402
from vggdet.config import RuntimeConfig  # noqa: E402
from vggdet.inference.tuning import convert_for_inference  # noqa: E402

ONNX_VARIANTS = ["onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8", "onnxruntime-int8-svd",
                 "openvino-int8-svd"]
ALL = ["vggdet", "torchvision", "vggdet-plain", "vggdet-cl", "torchvision-cl", "vggdet-bf16", "vgg19", *ONNX_VARIANTS]


def winograd_switch(variant: str):
    """`runtime.winograd` for a vggdet variant: off for the oneDNN variants, auto otherwise."""
    return False if variant in ("vggdet-plain", "vggdet-cl") else None


def build(variants: list, device: str, num_classes: int, overrides: list, threads: int = 2) -> dict:
    torch.manual_seed(0)
    # in train mode (plain convs) until the twins have copied its layers
    cfg = load_config(None, [f"model.num_classes={num_classes}"] + overrides)
    model = build_detector(cfg).to(device)
    # One model per Winograd switch (a copy, same weights): toggling one model between interleaved
    # variants would rebuild the transformed-weight cache inside the timings.
    vggdet: dict = {}
    models = {}
    for v in variants:
        if v.startswith("vggdet"):
            # bf16 on its own copy too: its kernels keep bf16 packed weights, the fp32 ones fp32 ones
            key = (winograd_switch(v), v == "vggdet-bf16")
            if key not in vggdet:
                vggdet[key] = copy.deepcopy(model) if vggdet else model
            models[v] = vggdet[key]
        elif v == "torchvision":
            models[v] = torchvision_twin(model).eval()
        elif v == "torchvision-cl":
            models[v] = torchvision_twin(model, channels_last=True).eval()
        elif v == "vgg19":
            cfg = load_config(None, [f"model.num_classes={num_classes}", "model.backbone.depth=19"] + overrides)
            models[v] = build_detector(cfg).to(device).eval()
        elif v in ONNX_VARIANTS:
            models[v] = onnx_runner(v, model, cfg, device, threads)
        else:
            raise SystemExit(f"unknown variant {v!r}; choose from {ALL}")
    for (switch, _), m in vggdet.items():
        m.eval()
        # what the predictor does (vggdet/inference/tuning.py): the wide 3x3 convs on the CPU, unless False
        convert_for_inference(m, RuntimeConfig(winograd=switch), torch.device(device))
    return models


def onnx_file(model, cfg, variant: str, _cache: dict = {}) -> str:  # noqa: B006 (one export per process)
    if variant in ONNX_PATHS:  # the peak-RSS child: the parent's file, not a new export
        return ONNX_PATHS[variant]
    """`model`'s weights exported to ONNX (float32 input, like the other variants); "-int8": quantized by
    vggdet/quantize.py, calibrated on 8 benchmark-like images; "-svd": fc6/fc7 factored to 1024/256 first."""
    import tempfile

    from vggdet.deploy.export import export_model
    from vggdet.deploy.quantize import quantize_onnx

    svd = variant.endswith("-svd")
    key = ("svd" if svd else "fp32", "-int8" in variant)
    if "tmp" not in _cache:
        import atexit
        import shutil

        _cache["tmp"] = tempfile.mkdtemp(prefix="bench_onnx_")
        atexit.register(shutil.rmtree, _cache["tmp"], True)  # ~1 GB of files for the full VGG16
    tmp = _cache["tmp"]
    if (key[0], False) not in _cache:
        path = os.path.join(tmp, f"{key[0]}.onnx")
        names = [f"class{i}" for i in range(1, cfg.model.num_classes + 1)]
        # a copy: the export converts the model in place (SVD, plain convs), the other variants share it
        export_model(copy.deepcopy(model), copy.deepcopy(cfg), names, path, input_dtype="float32",
                     svd=(1024, 256) if svd else None)
        _cache[(key[0], False)] = path
    if key[1] and key not in _cache:
        import cv2

        folder = os.path.join(tmp, "calib")
        if not os.path.isdir(folder):
            os.makedirs(folder)
            for k, im in enumerate(jpeg_like_images(8, seed=1)):
                cv2.imwrite(os.path.join(folder, f"{k}.png"), (im.permute(1, 2, 0).numpy()[..., ::-1] * 255).round())
        paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
        _cache[key] = os.path.join(tmp, f"{key[0]}_int8.onnx")
        quantize_onnx(_cache[(key[0], False)], _cache[key], paths)
    return _cache[key]


ONNX_PATHS: dict = {}  # variant -> exported file, given to the peak-RSS children (--onnx-path)


def need(module: str, variant: str, extra: str) -> None:
    """A variant whose runtime is not installed: one line naming the extra, not a traceback."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise SystemExit(f"variant {variant}: {module} is not installed; pip install -e '.[{extra}]' "
                         "(make install installs it)")


def onnx_runner(variant: str, model, cfg, device: str, threads: int):
    """A callable list-of-[3,H,W] -> detections for the onnxruntime / openvino variants."""
    need("onnx", variant, "export")
    need("openvino" if variant.startswith("openvino") else "onnxruntime", variant,
         "bench" if variant.startswith("openvino") else "export")
    path = onnx_file(model, cfg, variant)
    ONNX_PATHS[variant] = path
    if variant.startswith("openvino"):
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "INFERENCE_PRECISION_HINT": "f32"})

        def run(x):
            out = compiled(x)
            return [out[o] for o in compiled.outputs]
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        session = ort.InferenceSession(path, so, providers=providers)

        def run(x):
            return session.run(None, {"images": x})

    def detect(images):
        boxes, _, _, index = run(torch.stack(images).cpu().numpy())
        return [{"boxes": boxes[index == k]} for k in range(len(images))]
    return detect


def runner(name: str, models: dict, device: str, amp: str | None):
    model = models[name]
    dtype = amp or ("bfloat16" if name == "vggdet-bf16" else None)
    if name in ONNX_VARIANTS:
        return model

    def run(images):
        if name.startswith("vggdet"):  # the Winograd switch is per model (see `build`)
            model.channels_last = False if name == "vggdet-plain" else None
        with torch.inference_mode(), autocast(device, dtype):
            return model(images)
    return run


def rss_child(a) -> None:
    """--rss-of VARIANT: one warm-up and one timed batch of the largest size, then print the peak RSS."""
    if a.onnx_path:
        ONNX_PATHS[a.rss_of] = a.onnx_path
    models = build([a.rss_of], "cpu", a.num_classes, a.set, a.threads)
    if a.rss_of.startswith("torchvision") or a.rss_of in ONNX_VARIANTS:  # keep only that model alive
        models = {a.rss_of: models[a.rss_of]}
    run = runner(a.rss_of, models, "cpu", a.amp_dtype)
    images = jpeg_like_images(max(a.batch))
    import gc

    gc.collect()
    try:  # reset the peak (VmHWM) so the building of both models does not count (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    run(images)
    run(images)
    print(json.dumps({"peak_rss_mib": vm_hwm_mib() or peak_rss_mib()}))


def vm_hwm_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024.0
    except (OSError, StopIteration, ValueError):
        return 0.0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="autocast every variant (fp16 on CUDA, bf16 on CPU)")
    p.add_argument("--variants", default="vggdet,torchvision", help=f"comma list from {ALL}, or 'all'")
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--no-rss", action="store_true", help="skip the per-variant peak-RSS subprocesses")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--set", nargs="*", default=[], help="vggdet config overrides key=value")
    p.add_argument("--layers", action="store_true", help="time each 3x3 conv by every CPU kernel (CPU)")
    p.add_argument("--rss-of", help=argparse.SUPPRESS)
    p.add_argument("--onnx-path", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.layers:
        return layers_table(a)
    a.amp_dtype = ("float16" if a.device.startswith("cuda") else "bfloat16") if a.amp else None
    if a.rss_of:
        return rss_child(a)
    variants = ALL if a.variants == "all" else a.variants.split(",")
    print(f"Machine: {machine(a.device)}", file=sys.stderr, flush=True)
    if a.device.startswith("cuda"):
        variants = [v for v in variants if v != "vggdet-bf16"] if a.amp else variants
    models = build(variants, a.device, a.num_classes, a.set, a.threads)
    runs = {v: runner(v, models, a.device, a.amp_dtype) for v in variants}
    images = jpeg_like_images(max(a.batch), device=a.device)
    times = {(v, b): [] for v in variants for b in a.batch}
    gpu_peak = {(v, b): 0.0 for v in variants for b in a.batch}
    ndet = {}
    for r in range(a.warmup + a.runs):
        order = variants if r % 2 == 0 else variants[::-1]
        for b in a.batch:
            for v in order:
                if a.device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                out = []
                t = timed(lambda: out.append(runs[v](images[:b])), a.device)  # noqa: B023
                if a.device.startswith("cuda"):
                    gpu_peak[(v, b)] = max(gpu_peak[(v, b)], torch.cuda.max_memory_allocated() / 2**20)
                ndet[(v, b)] = sum(len(d["boxes"]) for d in out[0]) / b
                if r >= a.warmup:
                    times[(v, b)].append(t / b)
        print(f"run {r + 1}/{a.warmup + a.runs}: " + ", ".join(
            f"{v}@{b} {median(times[(v, b)]) if r >= a.warmup else float('nan'):.3f}" for b in a.batch
            for v in variants), file=sys.stderr, flush=True)
    rss = {}
    if not a.no_rss and not a.device.startswith("cuda"):
        for v in variants:
            cmd = [sys.executable, __file__, "--rss-of", v, "--threads", str(a.threads), "--batch", *map(str, a.batch),
                   "--num-classes", str(a.num_classes)] + (["--amp"] if a.amp else []) + (["--set", *a.set] if a.set else [])
            if v in ONNX_PATHS:  # the file this run exported (and quantized): measured, not made again
                cmd += ["--onnx-path", ONNX_PATHS[v]]
            res = subprocess.run(cmd, capture_output=True, text=True)
            rss[v] = json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_mib"] if res.returncode == 0 else None
    print_table(a, variants, times, gpu_peak, rss, ndet)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine(a.device), "args": vars(a),
                       "s_per_image": {f"{v}@{b}": median(t) for (v, b), t in times.items()},
                       "gpu_peak_mib": {f"{v}@{b}": m for (v, b), m in gpu_peak.items()},
                       "peak_rss_mib": rss}, f, indent=2)


def layers_table(a) -> None:
    """Every 3x3 conv of the full-size VGG16 + RPN at a 600x800 input, timed by each CPU kernel
    (vggdet/model/cpu_kernels.py) with the ReLU: the plain oneDNN conv (channels_last), the prepacked one,
    Winograd F(4x4,3x3), and in bf16 autocast's conv and the prepacked bf16 one; the fp32 kernels' error
    against float64; which kernel the fixed rule and the timing cache (`tuning.decide`, measured now where
    the cache has nothing) pick."""
    from vggdet.inference import tuning
    from vggdet.model import cpu_kernels, winograd

    torch.manual_seed(0)
    model = build_detector(load_config(None, ["model.num_classes=20"])).eval()  # plain modules
    layers = [(f"body.{i}", m) for i, m in enumerate(model.backbone.body)] + [("rpn.conv", model.rpn.conv)]
    x = torch.rand(a.batch[0], 3, 600, 800).contiguous(memory_format=torch.channels_last)
    print(f"\nMachine: {machine('cpu')}; batch {a.batch[0]}; median of {a.runs} runs after {a.warmup} warm-up; "
          f"tuned decisions from {tuning.cache_path()} (measured now where missing)\n")
    names = ["oneDNN", "prepack", "Winograd", "bf16 autocast", "bf16 prepack"]
    print("| layer | in -> out | map | " + " | ".join(f"{n} s" for n in names) + " | rel. err prepack | "
          "rel. err Winograd | fixed rule | as tuned |")
    print("|" + "---|" * (len(names) + 7))
    total = {n: 0.0 for n in names + ["fixed", "tuned"]}
    relu = torch.nn.functional.relu
    with torch.inference_mode():
        for name, conv in layers:
            if not isinstance(conv, torch.nn.Conv2d):
                x = conv(x)  # ReLU (already applied below) is a no-op on x; max-pool halves it
                continue
            fast = cpu_kernels.FastConv2d.from_conv(conv, relu=torch.nn.ReLU())
            runs = {"oneDNN": lambda: relu(conv(x)), "prepack": lambda: cpu_kernels.prepacked(x, conv, True),  # noqa: B023
                    "Winograd": lambda: winograd.conv3x3(x, conv, relu=True),  # noqa: B023
                    "bf16 autocast": lambda: _bf16(lambda: relu(conv(x))),  # noqa: B023
                    "bf16 prepack": lambda: cpu_kernels.prepacked(x, conv, True, torch.bfloat16)}  # noqa: B023
            if not winograd.candidate(conv):
                runs.pop("Winograd")
            ref = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1).relu()
            err = {n: ((runs[n]().double() - ref).abs().max() / ref.abs().max()).item() for n in ("prepack", "Winograd")
                   if n in runs}
            ts: dict = {n: [] for n in runs}
            for r in range(a.warmup + a.runs):
                for n in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                    t = timed(runs[n], "cpu")
                    if r >= a.warmup:
                        ts[n].append(t)
            t = {n: median(v) for n, v in ts.items()}
            usable = cpu_kernels.kernels_for(fast, x)
            fixed = cpu_kernels.fixed_choice(fast, usable)
            tuned = tuning.decide(fast, x, usable)[0] if len(usable) > 1 else usable[0]
            label = {"prepack": "prepack", "winograd": "Winograd"}
            for n in names:
                total[n] += t.get(n, t["oneDNN"])
            total["fixed"] += t[label[fixed]]
            total["tuned"] += t[label[tuned]]
            cells = " | ".join(f"{t[n]:.4f}" if n in t else "-" for n in names)
            print(f"| {name} | {conv.in_channels} -> {conv.out_channels} | {x.shape[2]}x{x.shape[3]} | {cells} | "
                  f"{err['prepack']:.1e} | {err.get('Winograd', float('nan')):.1e} | {fixed} | {tuned} |")
            x = relu(conv(x))
    print("\nAll 3x3 convs (this table's timings): " + ", ".join(
        f"{n} {v:.3f} s" for n, v in total.items()) + f"; as tuned {total['oneDNN'] / total['tuned']:.2f}x the "
        "plain oneDNN convs")


def _bf16(fn):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn()


def print_table(a, variants, times, gpu_peak, rss, ndet) -> None:
    cuda = a.device.startswith("cuda")
    print(f"\nMachine: {machine(a.device)}; device {a.device}; amp {a.amp_dtype or 'off'}; "
          f"median of {a.runs} runs after {a.warmup} warm-up; inputs 500x375 -> 600x800\n")
    mem = "peak GPU MiB" if cuda else "peak RSS MiB (fresh process, largest batch)"
    print(f"| model | batch | s / image | images / s | speed-up vs torchvision | {mem} | detections / image |")
    print("|---|---|---|---|---|---|---|")
    for b in a.batch:
        base = median(times[("torchvision", b)]) if ("torchvision", b) in times else float("nan")
        for v in variants:
            s = median(times[(v, b)])
            m = gpu_peak[(v, b)] if cuda else rss.get(v)
            m = f"{m:.0f}" if m else "-"
            print(f"| {v} | {b} | {s:.3f} | {1 / s:.2f} | {base / s:.2f}x | {m} | {ndet[(v, b)]:.1f} |")


if __name__ == "__main__":
    main()
